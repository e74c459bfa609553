/* tt_client.c — the FL client of every firmware device: protocol v1 of tt_client.h.
 *
 * Why it is written this way:
 *  - It runs on tt_hal.h only, so the same file is the bare-metal Cortex-M client (port/cm4)
 *    and the host executable (port/host) that parity tests drive without QEMU.
 *  - Files are streamed: round.bin's batch order and data.bin's samples are read batch by
 *    batch at computed offsets (the shard stays in "flash"/storage, as on a real device), mix.bin
 *    one model at a time, gist.bin one segment chunk at a time.  RAM holds the model, one batch
 *    and a few fixed chunks; nothing scales with the number of samples, models or segments.
 *  - Every buffer that scales with the model comes from the static arena (tt_arena.h), so an
 *    oversized model is a reported fault ("!FAULT arena need=.. have=..") and never a silent
 *    overflow.  Fixed-size chunks live on the (MPU-guarded) application stack.
 *  - W and U move bulk bytes over the UART itself (the "realistic serial cost" mode): W streams
 *    the payload into round.bin through a 256-byte stack chunk, U streams update.bin back the
 *    same way; neither holds a file in RAM nor touches the arena.
 *  - No libc: numbers are formatted by the small writers below (ce_sum as %.9g plus its exact
 *    IEEE-754 bits, so the host can compare bit for bit).
 *
 * Arena use of T (the host mirrors it in tinytwin.firmware.build.client_arena_bytes):
 *   tt_mlp_arena_bytes(layers, sizes, batch, momentum != 0)   (a batch's x is read straight
 *                                                              into the model's act[0])
 *   + align8(batch * 4)              labels of one batch
 *   + align8(batch * 4)              order positions of one batch
 * M: align8(n_params * 4); G: 2 * align8(n_params * 4). */
#include "tt_client.h"

#include <stddef.h>
#include <stdint.h>

#include "tt_arena.h"
#include "tt_hal.h"
#include "tt_nn.h"

#define TT_LINE_MAX 96
#define TT_CHUNK 64                    /* floats per streamed chunk (M, G) */
#define TT_MAGIC_ROUND 0x31525454u     /* 'TTR1' */
#define TT_MAGIC_DATA 0x31445454u      /* 'TTD1' */
#define TT_MAGIC_MIX 0x314D5454u       /* 'TTM1' */
#define TT_MAGIC_GIST 0x31475454u      /* 'TTG1' */
#define TT_FILE_MAX 0x7fffffffu        /* semihosting offsets are 32-bit */

/* ------------------------------------------------------------------ output line builder */

static char g_out[192];
static int g_out_len;

static void out_reset(void) { g_out_len = 0; }

static void out_char(char c) {
    if (g_out_len < (int)sizeof(g_out) - 2) g_out[g_out_len++] = c;
}

static void out_str(const char *s) {
    while (*s) out_char(*s++);
}

static void out_u64(uint64_t v) {
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v);
    while (n) out_char(tmp[--n]);
}

static void out_u32(uint32_t v) { out_u64(v); }

static void out_hex(uint32_t v, int digits) {
    static const char hexd[] = "0123456789abcdef";
    int i;
    for (i = digits - 1; i >= 0; i--) out_char(hexd[(v >> (4 * i)) & 0xfu]);
}

/* %.9g of a double, without libc.  Scaling by powers of ten in double keeps ~15 correct
 * digits, so the nine printed ones are right except in rare last-digit ties; ce_bits
 * (printed next to it) is the exact value. */
static void out_g9(double v) {
    char d[9];
    uint32_t digits;
    int e = 0, i, last;
    if (v != v) { out_str("nan"); return; }
    if (v < 0) { out_char('-'); v = -v; }
    if (v > 1.7976931348623157e308) { out_str("inf"); return; }
    if (v == 0.0) { out_char('0'); return; }
    while (v >= 1e32) { v *= 1e-32; e += 32; }
    while (v >= 10.0) { v /= 10.0; e += 1; }
    while (v < 1e-32) { v *= 1e32; e -= 32; }
    while (v < 1.0) { v *= 10.0; e -= 1; }
    digits = (uint32_t)(v * 1e8 + 0.5);          /* 9 significant digits */
    if (digits >= 1000000000u) { digits = (digits + 5u) / 10u; e += 1; }
    for (i = 8; i >= 0; i--) { d[i] = (char)('0' + digits % 10u); digits /= 10u; }
    last = 8;
    while (last > 0 && d[last] == '0') last--;  /* %g strips trailing zeros */
    if (e < -4 || e >= 9) {                      /* d.ddde+XX */
        out_char(d[0]);
        if (last > 0) { out_char('.'); for (i = 1; i <= last; i++) out_char(d[i]); }
        out_char('e');
        out_char(e < 0 ? '-' : '+');
        if (e < 0) e = -e;
        if (e < 10) out_char('0');
        out_u32((uint32_t)e);
    } else if (e >= 0) {                         /* ddd.ddd */
        for (i = 0; i <= e; i++) out_char(d[i]);
        if (last > e) { out_char('.'); for (i = e + 1; i <= last; i++) out_char(d[i]); }
    } else {                                     /* 0.000ddd */
        out_str("0.");
        for (i = 0; i < -e - 1; i++) out_char('0');
        for (i = 0; i <= last; i++) out_char(d[i]);
    }
}

static void out_send(void) {
    g_out[g_out_len++] = '\n';
    g_out[g_out_len] = '\0';
    tt_hal_write_str(g_out);
    out_reset();
}

static void reply_err(const char *reason) {
    out_reset();
    out_str("ERR ");
    out_str(reason);
    out_send();
}

/* "need=<a> have=<b>" for tt_hal_fault. */
static void arena_fault(size_t need, size_t have) {
    out_reset();
    out_str("need=");
    out_u32((uint32_t)need);
    out_str(" have=");
    out_u32((uint32_t)have);
    g_out[g_out_len] = '\0';
    tt_hal_fault("arena", g_out);
}

/* ------------------------------------------------------------------ file helpers */

static int read_at(tt_file f, uint32_t pos, void *buf, uint32_t n) {
    if (tt_hal_seek(f, pos) != 0) return -1;
    return tt_hal_read(f, buf, n) == (int32_t)n ? 0 : -1;
}

static int read_u32(tt_file f, uint32_t pos, uint32_t *v) { return read_at(f, pos, v, 4); }

static int read_i32(tt_file f, uint32_t pos, int32_t *v) { return read_at(f, pos, v, 4); }

static int read_f32(tt_file f, uint32_t pos, float *v) { return read_at(f, pos, v, 4); }

static size_t align8(size_t n) { return (n + 7u) & ~(size_t)7u; }

static void close_all(tt_file a, tt_file b, tt_file c) {
    if (a >= 0) tt_hal_close(a);
    if (b >= 0) tt_hal_close(b);
    if (c >= 0) tt_hal_close(c);
}

/* ------------------------------------------------------------------ the model (T) */

static tt_mlp g_model;
static int g_model_ok;                 /* 0 after M/G reused the arena */
static int32_t g_nl, g_batch, g_mom;
static int32_t g_sizes[TT_MAX_LAYERS + 1], g_relu[TT_MAX_LAYERS];
static int32_t *g_yb, *g_ob;           /* batch labels, batch order positions */

static int same_shape(int32_t nl, const int32_t *sizes, const int32_t *relu, int32_t batch, int32_t mom) {
    int32_t i;
    if (!g_model_ok || nl != g_nl || batch != g_batch || mom != g_mom) return 0;
    for (i = 0; i <= nl; i++) if (sizes[i] != g_sizes[i]) return 0;
    for (i = 0; i < nl; i++) if ((relu[i] != 0) != (g_relu[i] != 0)) return 0;
    return 1;
}

/* Allocate the model and one batch's buffers (first T, or the layer sizes changed).
 * Faults (no return) when the arena is too small. */
static void ensure_model(int32_t nl, const int32_t *sizes, const int32_t *relu, int32_t batch, int32_t mom) {
    size_t ib = align8((size_t)batch * 4u);
    size_t need = tt_mlp_arena_bytes(nl, sizes, batch, mom) + 2u * ib;
    int32_t i;
    if (same_shape(nl, sizes, relu, batch, mom)) return;
    g_model_ok = 0;
    tt_arena_reset();
    if (tt_mlp_init(&g_model, nl, sizes, relu, batch, mom) != 0) arena_fault(need, tt_arena_size());
    g_yb = (int32_t *)tt_arena_alloc(ib);
    g_ob = (int32_t *)tt_arena_alloc(ib);
    if (!g_yb || !g_ob) arena_fault(need, tt_arena_size());
    g_nl = nl;
    g_batch = batch;
    g_mom = mom;
    for (i = 0; i <= nl; i++) g_sizes[i] = sizes[i];
    for (i = 0; i < nl; i++) g_relu[i] = relu[i];
    g_model_ok = 1;
}

/* The round.bin header, decoded and checked. */
typedef struct {
    int32_t nl, sizes[TT_MAX_LAYERS + 1], relu[TT_MAX_LAYERS];
    int32_t epochs, batch, n_samples;
    float lr, momentum, wd;
    uint32_t params_at;                /* file offset of params */
} round_hdr;

static const char *read_round_header(tt_file f, round_hdr *h) {
    uint32_t magic, pos = 8;
    int32_t i;
    if (read_u32(f, 0, &magic) || magic != TT_MAGIC_ROUND) return "round.bin: bad magic";
    if (read_i32(f, 4, &h->nl) || h->nl < 1 || h->nl > TT_MAX_LAYERS) return "round.bin: bad n_layers";
    if (read_at(f, pos, h->sizes, (uint32_t)(h->nl + 1) * 4u)) return "round.bin: truncated";
    pos += (uint32_t)(h->nl + 1) * 4u;
    if (read_at(f, pos, h->relu, (uint32_t)h->nl * 4u)) return "round.bin: truncated";
    pos += (uint32_t)h->nl * 4u;
    for (i = 0; i <= h->nl; i++)
        if (h->sizes[i] < 1 || h->sizes[i] > 65536) return "round.bin: bad layer size";
    if (h->relu[h->nl - 1]) return "round.bin: the last layer (logits) cannot have ReLU";
    if (read_i32(f, pos, &h->epochs) || read_i32(f, pos + 4, &h->batch) || read_i32(f, pos + 8, &h->n_samples) ||
        read_f32(f, pos + 12, &h->lr) || read_f32(f, pos + 16, &h->momentum) || read_f32(f, pos + 20, &h->wd))
        return "round.bin: truncated";
    if (h->epochs < 0 || h->batch < 1 || h->batch > 65536 || h->n_samples < 0) return "round.bin: bad epochs/batch/n_samples";
    if (h->n_samples > 0 && (uint32_t)h->epochs > TT_FILE_MAX / 4u / (uint32_t)h->n_samples)
        return "round.bin: order too long";
    h->params_at = pos + 24;
    return 0;
}

static const char *cmd_train(void) {
    tt_file fr, fd, fu = -1;
    round_hdr h;
    const char *err;
    uint32_t magic, x_at = 12, y_at, order_at, t0, t1;
    int32_t n_data, n_feat, n_out, e, lo, i, steps = 0, ipt;
    float *xb;
    double ce_sum = 0.0;
    union { double d; uint32_t u[2]; } bits;

    fr = tt_hal_open("round.bin", 0);
    if (fr < 0) return "cannot open round.bin";
    err = read_round_header(fr, &h);
    if (err) { close_all(fr, -1, -1); return err; }
    fd = tt_hal_open("data.bin", 0);
    if (fd < 0) { close_all(fr, -1, -1); return "cannot open data.bin"; }
    if (read_u32(fd, 0, &magic) || magic != TT_MAGIC_DATA || read_i32(fd, 4, &n_data) || read_i32(fd, 8, &n_feat)) {
        close_all(fr, fd, -1);
        return "data.bin: bad header";
    }
    if (n_feat != h.sizes[0] || n_data < 0 || (uint32_t)n_data > (TT_FILE_MAX - 12u) / 4u / (uint32_t)(n_feat + 1)) {
        close_all(fr, fd, -1);
        return "data.bin: n_features differs from the model's inputs";
    }
    y_at = x_at + (uint32_t)n_data * (uint32_t)n_feat * 4u;
    n_out = h.sizes[h.nl];

    ensure_model(h.nl, h.sizes, h.relu, h.batch, h.momentum != 0.0f);
    if ((uint32_t)g_model.n_params > (TT_FILE_MAX - h.params_at) / 4u) { close_all(fr, fd, -1); return "round.bin: too many params"; }
    if (read_at(fr, h.params_at, g_model.params, (uint32_t)g_model.n_params * 4u)) {
        close_all(fr, fd, -1);
        return "round.bin: truncated params";
    }
    xb = g_model.act[0];   /* tt_nn.h: a batch read into act[0] is used in place */
    order_at = h.params_at + (uint32_t)g_model.n_params * 4u;
    tt_mlp_reset_optimizer(&g_model);

    t0 = tt_hal_ticks();
    for (e = 0; e < h.epochs && !err; e++) {
        for (lo = 0; lo < h.n_samples && !err; lo += h.batch) {
            int32_t bs = h.n_samples - lo < h.batch ? h.n_samples - lo : h.batch;
            uint32_t at = order_at + ((uint32_t)e * (uint32_t)h.n_samples + (uint32_t)lo) * 4u;
            if (read_at(fr, at, g_ob, (uint32_t)bs * 4u)) { err = "round.bin: truncated order"; break; }
            for (i = 0; i < bs; i++) {
                int32_t idx = g_ob[i];
                if (idx < 0 || idx >= n_data) { err = "round.bin: order position out of range"; break; }
                if (read_at(fd, x_at + (uint32_t)idx * (uint32_t)n_feat * 4u, xb + (size_t)i * (size_t)n_feat,
                            (uint32_t)n_feat * 4u) ||
                    read_i32(fd, y_at + (uint32_t)idx * 4u, &g_yb[i])) { err = "data.bin: truncated"; break; }
                if (g_yb[i] < 0 || g_yb[i] >= n_out) { err = "data.bin: label out of range"; break; }
            }
            if (err) break;
            ce_sum += (double)tt_mlp_loss_backward(&g_model, xb, g_yb, bs);
            tt_mlp_sgd_step(&g_model, h.lr, h.momentum, h.wd);
            steps++;
        }
    }
    t1 = tt_hal_ticks();
    close_all(fr, fd, -1);
    if (err) return err;

    fu = tt_hal_open("update.bin", 1);
    if (fu < 0) return "cannot create update.bin";
    if (tt_hal_write(fu, g_model.params, (uint32_t)g_model.n_params * 4u) != 0) { tt_hal_close(fu); return "cannot write update.bin"; }
    tt_hal_close(fu);

    ipt = (int32_t)tt_hal_insns_per_tick();
    bits.d = ce_sum;
    out_reset();
    out_str("OK T steps=");
    out_u32((uint32_t)steps);
    out_str(" ce_sum=");
    out_g9(ce_sum);
    out_str(" ticks=");
    out_u32(t1 - t0);
    out_str(" insns=");   /* 64-bit: an M3 passes 2^32 instructions in a few dozen epochs */
    out_u64((uint64_t)(t1 - t0) * (uint64_t)ipt);
    out_str(" arena_used=");
    out_u32((uint32_t)tt_arena_used());
    out_str(" arena_peak=");
    out_u32((uint32_t)tt_arena_peak());
    out_str(" ce_bits=0x");
    out_hex(bits.u[1], 8);             /* little-endian: high word second */
    out_hex(bits.u[0], 8);
    out_send();
    return 0;
}

/* ------------------------------------------------------------------ M: DecFedAvg mix */

/* Scratch for M and G: the model's buffers are given up (the next T re-initialises). */
static float *scratch_floats(int32_t n_params, int copies) {
    size_t one = align8((size_t)n_params * 4u);
    float *p;
    g_model_ok = 0;
    tt_arena_reset();
    p = (float *)tt_arena_alloc(one * (size_t)copies);
    if (!p) arena_fault(one * (size_t)copies, tt_arena_size());
    return p;
}

static void ok_ticks(const char *cmd, uint32_t t0, uint32_t t1) {
    out_reset();
    out_str("OK ");
    out_str(cmd);
    out_str(" ticks=");
    out_u32(t1 - t0);
    out_str(" insns=");
    out_u64((uint64_t)(t1 - t0) * tt_hal_insns_per_tick());
    out_send();
}

static const char *write_params(const char *path, const float *p, int32_t n) {
    tt_file f = tt_hal_open(path, 1);
    int32_t rc;
    if (f < 0) return "cannot create output file";
    rc = tt_hal_write(f, p, (uint32_t)n * 4u);
    tt_hal_close(f);
    return rc == 0 ? 0 : "cannot write output file";
}

static const char *cmd_mix(void) {
    tt_file f = tt_hal_open("mix.bin", 0);
    uint32_t magic, models_at, t0, t1;
    int32_t n, n_models, k, lo;
    float *out, w, chunk[TT_CHUNK], one = 1.0f;
    const char *err = 0;
    if (f < 0) return "cannot open mix.bin";
    if (read_u32(f, 0, &magic) || magic != TT_MAGIC_MIX || read_i32(f, 4, &n) || read_i32(f, 8, &n_models) ||
        n < 1 || n_models < 1 || (uint32_t)n > TT_FILE_MAX / 4u / (uint32_t)(n_models + 1)) {
        tt_hal_close(f);
        return "mix.bin: bad header";
    }
    out = scratch_floats(n, 1);
    models_at = 12u + (uint32_t)n_models * 4u;
    t0 = tt_hal_ticks();
    for (k = 0; k < n_models && !err; k++) {
        if (read_f32(f, 12u + (uint32_t)k * 4u, &w)) { err = "mix.bin: truncated"; break; }
        for (lo = 0; lo < n; lo += TT_CHUNK) {
            int32_t len = n - lo < TT_CHUNK ? n - lo : TT_CHUNK;
            const float *models[2];
            float weights[2];
            if (read_at(f, models_at + ((uint32_t)k * (uint32_t)n + (uint32_t)lo) * 4u, chunk, (uint32_t)len * 4u)) {
                err = "mix.bin: truncated";
                break;
            }
            /* out = sum_k w_k m_k, one model at a time: out <- 1*out + w_k m_k (1*out is exact). */
            if (k == 0) {
                models[0] = chunk;
                weights[0] = w;
                tt_mix(out + lo, models, weights, 1, len);
            } else {
                models[0] = out + lo;
                models[1] = chunk;
                weights[0] = one;
                weights[1] = w;
                tt_mix(out + lo, models, weights, 2, len);
            }
        }
    }
    t1 = tt_hal_ticks();
    tt_hal_close(f);
    if (err) return err;
    err = write_params("mixed.bin", out, n);
    if (err) return err;
    ok_ticks("M", t0, t1);
    return 0;
}

/* ------------------------------------------------------------------ G: Gist merge */

static uint32_t popcount8(uint32_t b) {
    b = b - ((b >> 1) & 0x55u);
    b = (b & 0x33u) + ((b >> 2) & 0x33u);
    return (b + (b >> 4)) & 0x0fu;
}

static const char *cmd_gist(void) {
    tt_file f = tt_hal_open("gist.bin", 0), fo;
    uint32_t magic, pos, nb, t0, t1;
    int32_t n, n_seg, s, lo, j;
    float a_local, *r, *phi, vals[TT_CHUNK];
    uint8_t bm[TT_CHUNK / 8];
    const char *err = 0;
    if (f < 0) return "cannot open gist.bin";
    if (read_u32(f, 0, &magic) || magic != TT_MAGIC_GIST || read_i32(f, 4, &n) || read_i32(f, 8, &n_seg) ||
        read_f32(f, 12, &a_local) || n < 1 || n_seg < 0 || (uint32_t)n > TT_FILE_MAX / 8u) {
        tt_hal_close(f);
        return "gist.bin: bad header";
    }
    r = scratch_floats(n, 2);
    phi = r + align8((size_t)n * 4u) / 4u;
    for (j = 0; j < n; j++) { r[j] = 0.0f; phi[j] = 0.0f; }
    nb = ((uint32_t)n + 7u) / 8u;
    pos = 16u + (uint32_t)n * 4u;        /* first segment */
    t0 = tt_hal_ticks();
    for (s = 0; s < n_seg && !err; s++) {
        float a;
        int32_t nnz, used = 0;
        uint32_t bm_at = pos + 4u, vals_at = pos + 8u + nb;
        if (read_f32(f, pos, &a) || read_i32(f, pos + 4u + nb, &nnz) || nnz < 0 || nnz > n) {
            err = "gist.bin: bad segment";
            break;
        }
        for (lo = 0; lo < n; lo += TT_CHUNK) {
            int32_t len = n - lo < TT_CHUNK ? n - lo : TT_CHUNK, nbytes = (len + 7) / 8, c = 0, b;
            if (read_at(f, bm_at + (uint32_t)lo / 8u, bm, (uint32_t)nbytes)) { err = "gist.bin: truncated"; break; }
            if (len % 8) bm[nbytes - 1] &= (uint8_t)((1u << (len % 8)) - 1u);   /* padding bits mean nothing */
            for (b = 0; b < nbytes; b++) c += (int32_t)popcount8(bm[b]);
            if (used + c > nnz) { err = "gist.bin: bitmap has more bits than nnz"; break; }
            if (c && read_at(f, vals_at + (uint32_t)used * 4u, vals, (uint32_t)c * 4u)) { err = "gist.bin: truncated"; break; }
            tt_gist_accumulate(r + lo, phi + lo, a, bm, vals, len);
            used += c;
        }
        if (!err && used != nnz) err = "gist.bin: nnz differs from the bitmap";
        pos = vals_at + (uint32_t)nnz * 4u;
    }
    if (err) { tt_hal_close(f); return err; }
    fo = tt_hal_open("merged.bin", 1);
    if (fo < 0) { tt_hal_close(f); return "cannot create merged.bin"; }
    for (lo = 0; lo < n && !err; lo += TT_CHUNK) {
        int32_t len = n - lo < TT_CHUNK ? n - lo : TT_CHUNK;
        if (read_at(f, 16u + (uint32_t)lo * 4u, vals, (uint32_t)len * 4u)) { err = "gist.bin: truncated"; break; }
        tt_gist_merge(vals, r + lo, phi + lo, a_local, len);
        if (tt_hal_write(fo, vals, (uint32_t)len * 4u) != 0) err = "cannot write merged.bin";
    }
    t1 = tt_hal_ticks();
    tt_hal_close(fo);
    tt_hal_close(f);
    if (err) return err;
    ok_ticks("G", t0, t1);
    return 0;
}

/* ------------------------------------------------------------------ W, U: bulk bytes over the UART */

#define TT_XFER_CHUNK 256u             /* bytes per semihosting write/read of W and U (stack) */

static const char g_eof[] = "end of input";   /* the host closed the line mid-payload */

/* W <n>: exactly n raw bytes follow the command line; they are streamed into round.bin one
 * chunk at a time (the file is the device's flash / receive buffer).  Every byte is consumed
 * even when the file cannot be written, so the host and the device stay in step. */
static const char *cmd_uart_in(uint32_t n) {
    uint8_t chunk[TT_XFER_CHUNK];
    tt_file f = tt_hal_open("round.bin", 1);
    const char *err = f < 0 ? "cannot create round.bin" : 0;
    uint32_t left = n, t0, t1;
    if (n > TT_FILE_MAX) err = "W: too many bytes";
    t0 = tt_hal_ticks();
    while (left) {
        uint32_t len = left < TT_XFER_CHUNK ? left : TT_XFER_CHUNK;
        if (tt_hal_read_bytes(chunk, len) != (int32_t)len) { err = g_eof; break; }
        if (!err && tt_hal_write(f, chunk, len) != 0) err = "cannot write round.bin";
        left -= len;
    }
    if (f >= 0) tt_hal_close(f);
    t1 = tt_hal_ticks();
    if (err) return err;
    out_reset();
    out_str("OK W bytes=");
    out_u32(n);
    out_str(" ticks=");
    out_u32(t1 - t0);
    out_str(" insns=");
    out_u64((uint64_t)(t1 - t0) * tt_hal_insns_per_tick());
    out_send();
    return 0;
}

/* U: "OK U bytes=<n>" and then exactly n raw bytes: update.bin as it is on the device.
 * The file is measured first (read through once), so the count in the line is exact. */
static const char *cmd_uart_out(void) {
    uint8_t chunk[TT_XFER_CHUNK];
    tt_file f = tt_hal_open("update.bin", 0);
    uint32_t n = 0, sent = 0, i;
    int32_t got;
    if (f < 0) return "cannot open update.bin (no T yet?)";
    do {
        got = tt_hal_read(f, chunk, TT_XFER_CHUNK);
        if (got < 0 || n > TT_FILE_MAX - (uint32_t)got) { tt_hal_close(f); return "cannot read update.bin"; }
        n += (uint32_t)got;
    } while (got == (int32_t)TT_XFER_CHUNK);
    if (tt_hal_seek(f, 0) != 0) { tt_hal_close(f); return "cannot read update.bin"; }
    out_reset();
    out_str("OK U bytes=");
    out_u32(n);
    out_send();
    while (sent < n) {
        uint32_t len = n - sent < TT_XFER_CHUNK ? n - sent : TT_XFER_CHUNK;
        got = tt_hal_read(f, chunk, len);
        /* The line promised n bytes: a read that fails now (it cannot, the file was just read
         * whole) still sends n bytes, zeros, so the host is never left waiting. */
        for (i = got < 0 ? 0u : (uint32_t)got; i < len; i++) chunk[i] = 0;
        tt_hal_write_bytes(chunk, len);
        sent += len;
    }
    tt_hal_close(f);
    return 0;
}

/* ------------------------------------------------------------------ P, Q and the loop */

static int parse_hex(const char *s, uint32_t *v) {
    uint32_t x = 0;
    int n = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s += 2;
    for (; *s; s++, n++) {
        char c = *s;
        uint32_t d;
        if (c >= '0' && c <= '9') d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = (uint32_t)(c - 'A' + 10);
        else return -1;
        if (n >= 8) return -1;
        x = (x << 4) | d;
    }
    *v = x;
    return n ? 0 : -1;
}

static int parse_int(const char *s, int *v) {
    int x = 0, neg = 0, n = 0;
    if (*s == '-') { neg = 1; s++; }
    for (; *s; s++, n++) {
        if (*s < '0' || *s > '9' || n >= 6) return -1;
        x = x * 10 + (*s - '0');
    }
    *v = neg ? -x : x;
    return n ? 0 : -1;
}

static int parse_u32(const char *s, uint32_t *v) {
    uint32_t x = 0;
    int n = 0;
    for (; *s; s++, n++) {
        uint32_t d = (uint32_t)(*s - '0');
        if (*s < '0' || *s > '9' || n >= 10 || x > (0xFFFFFFFFu - d) / 10u) return -1;
        x = x * 10u + d;
    }
    *v = x;
    return n ? 0 : -1;
}

static void banner(size_t arena) {
    out_reset();
    out_str("RDY tinytwin-fw 1 board=");
    out_str(tt_hal_board());
    out_str(" arena=");
    out_u32((uint32_t)arena);
    out_send();
}

int tt_client_main(void) {
    char line[TT_LINE_MAX];
    size_t size = 0;
    void *arena = tt_hal_arena(&size);
    tt_arena_init(arena, size);
    banner(tt_arena_size());
    for (;;) {
        const char *err = 0;
        int n = tt_hal_read_line(line, (int)sizeof(line));
        if (n < 0) return TT_EXIT_OK;                /* host closed the line */
        if (n == 0) continue;
        if (line[1] != '\0' && line[1] != ' ') { reply_err("unknown command"); continue; }
        switch (line[0]) {
        case 'T': err = cmd_train(); break;
        case 'M': err = cmd_mix(); break;
        case 'G': err = cmd_gist(); break;
        case 'W': {
            uint32_t n;
            if (line[1] != ' ' || parse_u32(line + 2, &n)) { err = "usage: W <nbytes>"; break; }
            err = cmd_uart_in(n);
            if (err == g_eof) return TT_EXIT_OK;     /* host closed the line */
            break;
        }
        case 'U':
            if (line[1] != '\0') { err = "usage: U"; break; }
            err = cmd_uart_out();
            break;
        case 'P': {
            uint32_t addr;
            if (line[1] != ' ' || parse_hex(line + 2, &addr)) { err = "usage: P <hexaddr>"; break; }
            tt_hal_poke(addr, 0xDEADBEEFu);
            tt_hal_write_str("OK P\n");
            break;
        }
        case 'Q': {
            int code = 0;
            if (line[1] == ' ' && parse_int(line + 2, &code)) { err = "usage: Q <code>"; break; }
            return code;
        }
        default: err = "unknown command"; break;
        }
        if (err) reply_err(err);
    }
}
