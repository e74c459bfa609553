/* tt_nn.c — dense MLP training in float32 that matches tinytwin's PyTorch models
 * (see tt_nn.h for the contract and the parameter layout).
 *
 * RAM: params, grads, optional momentum (n_params each) and one activation buffer per layer
 * boundary (batch_max x sizes[i], i = 0..n_layers).  Backprop runs *in place* over the
 * activations: the softmax gradient overwrites the logits, and layer i's input gradient
 * overwrites layer i's input activation once that activation has served for gW_i and for the
 * ReLU mask, so no separate delta buffers are needed (m->delta[] stay NULL).  A consequence:
 * after tt_mlp_loss_backward the activations hold gradients, not the forward pass.
 *
 * No libc: fills and copies are explicit loops that GCC cannot turn into memset/memcpy
 * calls (see tt_fill / tt_copy), math comes from tt_math.c. */
#include "tt_nn.h"

#include "tt_arena.h"
#include "tt_math.h"

/* ------------------------------------------------------------------ helpers */

/* GCC's loop distribution rewrites a constant fill into a memset call even with
 * -ffreestanding.  Storing a value read through a volatile makes it unknown to the compiler,
 * so the loop stays a loop (one volatile load per call, not per element). */
static void tt_fill(float *p, int32_t n, float value) {
    volatile float v = value;
    float x = v;
    int32_t i;
    for (i = 0; i < n; ++i) p[i] = x;
}

/* Same reasoning for copies: a loop that also computes something is not a memcpy. */
static void tt_copy(float *dst, const float *src, int32_t n) {
    volatile float v = 0.0f;
    float zero = v;
    int32_t i;
    for (i = 0; i < n; ++i) dst[i] = src[i] + zero;   /* x + 0.0f == x bit for bit, except -0 -> +0 */
}

static size_t round8(size_t n) { return (n + 7u) & ~(size_t)7u; }

static size_t float_bytes(int32_t a, int32_t b) { return round8((size_t)a * (size_t)b * sizeof(float)); }

/* Shapes the library accepts: 1..TT_MAX_LAYERS layers, every width and batch_max positive. */
static int shapes_ok(int32_t n_layers, const int32_t *sizes, int32_t batch_max) {
    int32_t i;
    if (sizes == NULL || n_layers < 1 || n_layers > TT_MAX_LAYERS || batch_max < 1) return 0;
    for (i = 0; i <= n_layers; ++i)
        if (sizes[i] < 1) return 0;
    return 1;
}

/* Dot product with four partial sums: independent FPU chains run faster on the M4, and the
 * split sum is at least as accurate as one long chain. */
static float dot(const float *a, const float *b, int32_t n) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int32_t k = 0;
    for (; k + 4 <= n; k += 4) {
        s0 += a[k] * b[k];
        s1 += a[k + 1] * b[k + 1];
        s2 += a[k + 2] * b[k + 2];
        s3 += a[k + 3] * b[k + 3];
    }
    for (; k < n; ++k) s0 += a[k] * b[k];
    return (s0 + s1) + (s2 + s3);
}

/* ------------------------------------------------------------------ sizing and set-up */

int32_t tt_mlp_param_count(int32_t n_layers, const int32_t *sizes) {
    int32_t i, total = 0;
    if (sizes == NULL || n_layers < 1 || n_layers > TT_MAX_LAYERS) return 0;
    for (i = 0; i < n_layers; ++i) total += sizes[i] * sizes[i + 1] + sizes[i + 1];
    return total;
}

size_t tt_mlp_arena_bytes(int32_t n_layers, const int32_t *sizes, int32_t batch_max, int32_t with_momentum) {
    int32_t i, p;
    size_t total;
    if (!shapes_ok(n_layers, sizes, batch_max)) return 0;
    p = tt_mlp_param_count(n_layers, sizes);
    total = float_bytes(p, with_momentum ? 3 : 2);  /* params, grads (, momentum) in one block */
    for (i = 0; i <= n_layers; ++i) total += float_bytes(batch_max, sizes[i]);
    return total;
}

int tt_mlp_init(tt_mlp *m, int32_t n_layers, const int32_t *sizes, const int32_t *relu,
                int32_t batch_max, int32_t with_momentum) {
    int32_t i, p, off = 0;
    size_t need = tt_mlp_arena_bytes(n_layers, sizes, batch_max, with_momentum);
    if (m == NULL || relu == NULL || need == 0 || relu[n_layers - 1]) return -1;  /* logits are never ReLU'd */
    /* Check the whole need first so that a failure allocates nothing. */
    if (tt_arena_size() - tt_arena_used() < need) return -1;
    p = tt_mlp_param_count(n_layers, sizes);
    m->n_layers = n_layers;
    m->batch_max = batch_max;
    m->n_params = p;
    m->params = (float *)tt_arena_alloc(float_bytes(p, with_momentum ? 3 : 2));
    m->grads = m->params + p;
    m->momentum = with_momentum ? m->grads + p : NULL;
    for (i = 0; i <= TT_MAX_LAYERS; ++i)
        m->act[i] = i <= n_layers ? (float *)tt_arena_alloc(float_bytes(batch_max, sizes[i])) : NULL;
    m->delta[0] = m->delta[1] = NULL;
    for (i = 0; i < TT_MAX_LAYERS; ++i) {
        tt_dense *L = &m->layer[i];
        if (i >= n_layers) {
            L->n_in = L->n_out = L->relu = 0;
            L->w = L->b = L->gw = L->gb = NULL;
            continue;
        }
        L->n_in = sizes[i];
        L->n_out = sizes[i + 1];
        L->relu = relu[i] != 0;
        L->w = m->params + off;
        L->gw = m->grads + off;
        off += L->n_in * L->n_out;
        L->b = m->params + off;
        L->gb = m->grads + off;
        off += L->n_out;
    }
    tt_fill(m->params, 2 * p, 0.0f);
    tt_mlp_reset_optimizer(m);
    return 0;
}

/* ------------------------------------------------------------------ forward */

const float *tt_mlp_forward(tt_mlp *m, const float *x, int32_t batch) {
    int32_t i, b, o;
    if (batch < 1 || batch > m->batch_max) return NULL;   /* would overrun the activations */
    if (x != m->act[0]) tt_copy(m->act[0], x, batch * m->layer[0].n_in);
    for (i = 0; i < m->n_layers; ++i) {
        const tt_dense *L = &m->layer[i];
        const float *in = m->act[i];
        float *out = m->act[i + 1];
        for (b = 0; b < batch; ++b, in += L->n_in, out += L->n_out) {
            const float *w = L->w;
            for (o = 0; o < L->n_out; ++o, w += L->n_in) {
                float z = dot(in, w, L->n_in) + L->b[o];   /* x·W^T first, then the bias, as addmm */
                if (L->relu && z < 0.0f) z = 0.0f;
                out[o] = z;
            }
        }
    }
    return m->act[m->n_layers];
}

int32_t tt_mlp_correct(tt_mlp *m, const float *x, const int32_t *y, int32_t batch) {
    const float *z = tt_mlp_forward(m, x, batch);
    int32_t c = m->layer[m->n_layers - 1].n_out, b, k, correct = 0;
    if (z == NULL) return 0;
    for (b = 0; b < batch; ++b, z += c) {
        int32_t best = 0;   /* first maximum wins, like torch.argmax */
        for (k = 1; k < c; ++k)
            if (z[k] > z[best]) best = k;
        correct += best == y[b];
    }
    return correct;
}

/* ------------------------------------------------------------------ loss and backward */

/* Softmax cross-entropy of every row of the logits, in place: the row becomes
 * d(mean CE)/d(logits) = (softmax - onehot) / batch.  Returns the sum of the rows' CE.
 * Stable: CE = log(sum exp(z - max)) - (z_y - max). */
static float softmax_ce_grad(float *z, const int32_t *y, int32_t batch, int32_t c) {
    float ce = 0.0f, inv_batch = 1.0f / (float)batch;
    int32_t b, k;
    for (b = 0; b < batch; ++b, z += c) {
        float mx = z[0], s = 0.0f, ls, inv_s;
        int32_t label = y[b];
        for (k = 1; k < c; ++k)
            if (z[k] > mx) mx = z[k];
        for (k = 0; k < c; ++k) s += tt_expf(z[k] - mx);
        ls = tt_logf(s);
        if (label >= 0 && label < c) ce += ls - (z[label] - mx);  /* the client checks labels */
        inv_s = 1.0f / s;
        for (k = 0; k < c; ++k) {
            float p = tt_expf(z[k] - mx) * inv_s;
            z[k] = (k == label ? p - 1.0f : p) * inv_batch;
        }
    }
    return ce;
}

/* gW = dᵀ·in and gb = Σ_b d for one layer; d is (batch x n_out), in is (batch x n_in). */
static void dense_param_grads(const tt_dense *L, const float *d, const float *in, int32_t batch) {
    int32_t o, b, k, n_in = L->n_in, n_out = L->n_out;
    for (o = 0; o < n_out; ++o) {
        float *gw = L->gw + o * n_in;
        float gb = d[o];
        float d0 = d[o];
        for (k = 0; k < n_in; ++k) gw[k] = d0 * in[k];    /* sample 0 assigns: no zero fill */
        for (b = 1; b < batch; ++b) {
            float db = d[b * n_out + o];
            const float *row = in + b * n_in;
            gb += db;
            if (db == 0.0f) continue;                       /* ReLU zeros: nothing to add */
            for (k = 0; k < n_in; ++k) gw[k] += db * row[k];
        }
        L->gb[o] = gb;
    }
}

/* The gradient w.r.t. the layer's input, written over the input activation `in`:
 * in[b,k] <- Σ_o d[b,o]·W[o,k], masked by ReLU'(previous layer) = (in[b,k] > 0). */
static void dense_input_grads(const tt_dense *L, const float *d, float *in, int32_t batch, int32_t masked) {
    int32_t b, k, o, n_in = L->n_in, n_out = L->n_out;
    for (b = 0; b < batch; ++b, d += n_out, in += n_in) {
        for (k = 0; k < n_in; ++k) {
            const float *w = L->w + k;
            float s = 0.0f;
            if (masked && !(in[k] > 0.0f)) {
                in[k] = 0.0f;
                continue;
            }
            for (o = 0; o < n_out; ++o, w += n_in) s += d[o] * *w;
            in[k] = s;
        }
    }
}

float tt_mlp_loss_backward(tt_mlp *m, const float *x, const int32_t *y, int32_t batch) {
    int32_t i, n = m->n_layers;
    float ce;
    if (tt_mlp_forward(m, x, batch) == NULL) {   /* bad batch size: a zero step, not stale gradients */
        tt_fill(m->grads, m->n_params, 0.0f);
        return 0.0f;
    }
    ce = softmax_ce_grad(m->act[n], y, batch, m->layer[n - 1].n_out);
    for (i = n - 1; i >= 0; --i) {
        const tt_dense *L = &m->layer[i];
        dense_param_grads(L, m->act[i + 1], m->act[i], batch);
        if (i > 0) dense_input_grads(L, m->act[i + 1], m->act[i], batch, m->layer[i - 1].relu);
    }
    return ce;
}

/* ------------------------------------------------------------------ optimizer */

void tt_mlp_reset_optimizer(tt_mlp *m) {
    if (m->momentum != NULL) tt_fill(m->momentum, m->n_params, 0.0f);
}

/* PyTorch SGD: g' = g + wd·w; buf = μ·buf + g'; w -= lr·buf.  A model built without momentum
 * buffers ignores `momentum` (build it with with_momentum = (momentum != 0)). */
void tt_mlp_sgd_step(tt_mlp *m, float lr, float momentum, float weight_decay) {
    float *w = m->params, *buf = m->momentum;
    const float *g = m->grads;
    int32_t j, n = m->n_params;
    int use_buf = buf != NULL && momentum != 0.0f;
    for (j = 0; j < n; ++j) {
        float gj = g[j];
        if (weight_decay != 0.0f) gj += weight_decay * w[j];
        if (use_buf) {
            buf[j] = momentum * buf[j] + gj;
            gj = buf[j];
        }
        w[j] -= lr * gj;
    }
}

/* ------------------------------------------------------------------ merges */

void tt_mix(float *out, const float *const *models, const float *weights, int32_t n_models, int32_t n_params) {
    int32_t j, k;
    if (n_models < 1) {
        tt_fill(out, n_params, 0.0f);
        return;
    }
    for (j = 0; j < n_params; ++j) {   /* the sum is complete before out[j] is written: out may be models[0] */
        float s = weights[0] * models[0][j];
        for (k = 1; k < n_models; ++k) s += weights[k] * models[k][j];
        out[j] = s;
    }
}

void tt_gist_accumulate(float *r, float *phi, float a, const uint8_t *bitmap, const float *values, int32_t n_params) {
    int32_t byte, n_bytes = (n_params + 7) / 8;
    const float *v = values;
    for (byte = 0; byte < n_bytes; ++byte) {
        uint32_t bits = bitmap[byte];
        int32_t j = byte * 8;
        for (; bits != 0u && j < n_params; bits >>= 1, ++j) {   /* empty bytes cost one test */
            if (bits & 1u) {
                r[j] += a * *v++;
                phi[j] += a;
            }
        }
    }
}

void tt_gist_merge(float *w, const float *r, const float *phi, float a_local, int32_t n_params) {
    int32_t j;
    for (j = 0; j < n_params; ++j) {
        float den = phi[j] + a_local;
        if (den > 0.0f) w[j] = (r[j] + a_local * w[j]) / den;
    }
}
