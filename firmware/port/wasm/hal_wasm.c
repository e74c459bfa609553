/* hal_wasm.c — tt_hal.h on WebAssembly (wasm32-wasi) under Wasmtime: the client as a module.
 *
 * Why it talks to WASI directly (<wasi/api.h>) and not through stdio/open(): wasi-libc's stdio
 * and its preopen table allocate from the heap (memory.grow), so the linear memory would grow
 * past what the build measured; with raw WASI calls the module's memory is exactly its static
 * image (data + stack + the arena), the figure the device's memory limit is checked against.
 *
 *  - UART: fd 0 / fd 1 (the runner inherits the device process's stdin/stdout).  Input goes
 *    through one small buffer so that the raw bytes after a "W" line are kept for
 *    tt_hal_read_bytes, as on the other ports.
 *  - Files: relative paths in the first preopened directory (fd 3: the device's work folder),
 *    like semihosting relative to QEMU's cwd.
 *  - Ticks: the fuel Wasmtime has consumed so far (import tinytwin.ticks, one per wasm
 *    operator), so insns = ticks x 1 is the module's own instruction count.
 *  - Poke: a store at the linear-memory address; past the memory's end Wasmtime traps
 *    ("out of bounds memory access") and the runner reports the fault. */
#include <stdint.h>
#include <string.h>
#include <wasi/api.h>

#include "tt_hal.h"

#ifndef TT_ARENA_BYTES
#error "TT_ARENA_BYTES must be defined by the build"
#endif

#define TT_WASM_FILES 8
#define TT_WASM_DIR_FD 3
#define TT_IN_BUF 512

static unsigned char tt_arena_buf[TT_ARENA_BYTES] __attribute__((aligned(8)));
static __wasi_fd_t g_files[TT_WASM_FILES];
static int g_open[TT_WASM_FILES];
static unsigned char g_in[TT_IN_BUF];
static uint32_t g_in_pos, g_in_len;

__attribute__((import_module("tinytwin"), import_name("ticks"))) uint32_t tt_wasm_ticks(void);

void tt_hal_init(void) { g_in_pos = g_in_len = 0; }

static void write_all(__wasi_fd_t fd, const void *buf, uint32_t n) {
    const uint8_t *p = (const uint8_t *)buf;
    while (n) {
        __wasi_ciovec_t iov = {p, n};
        __wasi_size_t done = 0;
        if (__wasi_fd_write(fd, &iov, 1, &done) != 0 || done == 0) return;
        p += done;
        n -= (uint32_t)done;
    }
}

/* One read into the input buffer; 0 at end of input. */
static uint32_t fill_input(void) {
    __wasi_iovec_t iov = {g_in, sizeof(g_in)};
    __wasi_size_t got = 0;
    if (__wasi_fd_read(0, &iov, 1, &got) != 0) got = 0;
    g_in_pos = 0;
    g_in_len = (uint32_t)got;
    return g_in_len;
}

void tt_hal_putc(char c) { write_all(1, &c, 1); }

void tt_hal_write_str(const char *s) { write_all(1, s, (uint32_t)strlen(s)); }

int tt_hal_read_line(char *buf, int max) {
    int n = 0, c = -1;
    for (;;) {
        if (g_in_pos == g_in_len && fill_input() == 0) {
            c = -1;
            break;
        }
        c = g_in[g_in_pos++];
        if (c == '\n') break;
        if (c == '\r') continue;
        if (n < max - 1) buf[n++] = (char)c;
    }
    buf[n] = '\0';
    if (c == -1 && n == 0) return -1;
    return n;
}

int32_t tt_hal_read_bytes(void *buf, uint32_t n) {
    uint8_t *p = (uint8_t *)buf;
    uint32_t got = 0;
    while (got < n) {
        uint32_t k;
        if (g_in_pos == g_in_len && fill_input() == 0) break;
        k = g_in_len - g_in_pos;
        if (k > n - got) k = n - got;
        memcpy(p + got, g_in + g_in_pos, k);
        g_in_pos += k;
        got += k;
    }
    return (int32_t)got;
}

void tt_hal_write_bytes(const void *buf, uint32_t n) { write_all(1, buf, n); }

tt_file tt_hal_open(const char *path, int for_write) {
    int i;
    for (i = 0; i < TT_WASM_FILES; i++) {
        if (!g_open[i]) {
            __wasi_fd_t fd;
            __wasi_oflags_t of = for_write ? (__WASI_OFLAGS_CREAT | __WASI_OFLAGS_TRUNC) : 0;
            __wasi_rights_t rights = __WASI_RIGHTS_FD_SEEK | __WASI_RIGHTS_FD_TELL |
                                     (for_write ? __WASI_RIGHTS_FD_WRITE : __WASI_RIGHTS_FD_READ);
            if (__wasi_path_open(TT_WASM_DIR_FD, 0, path, of, rights, 0, 0, &fd) != 0) return -1;
            g_files[i] = fd;
            g_open[i] = 1;
            return i;
        }
    }
    return -1;
}

static int file_ok(tt_file f) { return f >= 0 && f < TT_WASM_FILES && g_open[f]; }

int32_t tt_hal_read(tt_file f, void *buf, uint32_t n) {
    uint8_t *p = (uint8_t *)buf;
    uint32_t got = 0;
    if (!file_ok(f)) return -1;
    while (got < n) {
        __wasi_iovec_t iov = {p + got, n - got};
        __wasi_size_t k = 0;
        if (__wasi_fd_read(g_files[f], &iov, 1, &k) != 0) return -1;
        if (k == 0) break;
        got += (uint32_t)k;
    }
    return (int32_t)got;
}

int32_t tt_hal_write(tt_file f, const void *buf, uint32_t n) {
    const uint8_t *p = (const uint8_t *)buf;
    if (!file_ok(f)) return -1;
    while (n) {
        __wasi_ciovec_t iov = {p, n};
        __wasi_size_t k = 0;
        if (__wasi_fd_write(g_files[f], &iov, 1, &k) != 0 || k == 0) return -1;
        p += k;
        n -= (uint32_t)k;
    }
    return 0;
}

int32_t tt_hal_seek(tt_file f, uint32_t pos) {
    __wasi_filesize_t at = 0;
    if (!file_ok(f)) return -1;
    return __wasi_fd_seek(g_files[f], (__wasi_filedelta_t)pos, __WASI_WHENCE_SET, &at) == 0 ? 0 : -1;
}

void tt_hal_close(tt_file f) {
    if (file_ok(f)) {
        (void)__wasi_fd_close(g_files[f]);
        g_open[f] = 0;
    }
}

uint32_t tt_hal_ticks(void) { return tt_wasm_ticks(); }
uint32_t tt_hal_insns_per_tick(void) { return 1; }

void *tt_hal_arena(size_t *size) {
    *size = sizeof(tt_arena_buf);
    return tt_arena_buf;
}

void tt_hal_poke(uint32_t addr, uint32_t value) { *(volatile uint32_t *)(uintptr_t)addr = value; }

void tt_hal_fault(const char *kind, const char *detail) {
    tt_hal_write_str("!FAULT ");
    tt_hal_write_str(kind);
    tt_hal_write_str(" ");
    tt_hal_write_str(detail);
    tt_hal_write_str("\n");
    __wasi_proc_exit(TT_EXIT_FAULT);
}

void tt_hal_exit(int code) { __wasi_proc_exit((__wasi_exitcode_t)code); }

const char *tt_hal_board(void) { return "wasm32-wasi"; }
