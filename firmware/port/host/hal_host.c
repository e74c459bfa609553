/* hal_host.c — tt_hal.h on a POSIX host: the client as an ordinary executable.
 *
 * Why: a fast stand-in device (no QEMU boot, native speed) and a way to test the client's
 * protocol logic and numerics against the emulated boards.  Lines go over stdin/stdout, files
 * are opened relative to the working directory (like semihosting relative to QEMU's cwd),
 * ticks are 0 (the host measures nothing), and the arena is a static TT_ARENA_BYTES buffer.
 * There is no MPU: a poke is allowed only inside a virtual RAM of the arena's size at
 * 0x20000000 and faults like the MPU would anywhere else. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tt_hal.h"

#ifndef TT_ARENA_BYTES
#error "TT_ARENA_BYTES must be defined by the build"
#endif

#define TT_HOST_FILES 8
#define TT_HOST_RAM_BASE 0x20000000u

static unsigned char tt_arena_buf[TT_ARENA_BYTES] __attribute__((aligned(8)));
static FILE *g_files[TT_HOST_FILES];

void tt_hal_init(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

void tt_hal_putc(char c) {
    fputc(c, stdout);
    if (c == '\n') fflush(stdout);
}

void tt_hal_write_str(const char *s) {
    while (*s) tt_hal_putc(*s++);
}

int tt_hal_read_line(char *buf, int max) {
    int n = 0, c;
    while ((c = fgetc(stdin)) != EOF && c != '\n') {
        if (c == '\r') continue;
        if (n < max - 1) buf[n++] = (char)c;
    }
    buf[n] = '\0';
    if (c == EOF && n == 0) return -1;
    return n;
}

/* stdin/stdout are binary on POSIX; the payload after a command line is read from the same
 * FILE buffer that tt_hal_read_line left it in. */
int32_t tt_hal_read_bytes(void *buf, uint32_t n) { return (int32_t)fread(buf, 1, n, stdin); }

void tt_hal_write_bytes(const void *buf, uint32_t n) {
    fwrite(buf, 1, n, stdout);
    fflush(stdout);
}

tt_file tt_hal_open(const char *path, int for_write) {
    int i;
    for (i = 0; i < TT_HOST_FILES; i++) {
        if (!g_files[i]) {
            g_files[i] = fopen(path, for_write ? "wb" : "rb");
            return g_files[i] ? i : -1;
        }
    }
    return -1;
}

static FILE *file_of(tt_file f) { return f >= 0 && f < TT_HOST_FILES ? g_files[f] : NULL; }

int32_t tt_hal_read(tt_file f, void *buf, uint32_t n) {
    FILE *fp = file_of(f);
    return fp ? (int32_t)fread(buf, 1, n, fp) : -1;
}

int32_t tt_hal_write(tt_file f, const void *buf, uint32_t n) {
    FILE *fp = file_of(f);
    return fp && fwrite(buf, 1, n, fp) == n ? 0 : -1;
}

int32_t tt_hal_seek(tt_file f, uint32_t pos) {
    FILE *fp = file_of(f);
    return fp && fseek(fp, (long)pos, SEEK_SET) == 0 ? 0 : -1;
}

void tt_hal_close(tt_file f) {
    FILE *fp = file_of(f);
    if (fp) {
        fclose(fp);
        g_files[f] = NULL;
    }
}

uint32_t tt_hal_ticks(void) { return 0; }
uint32_t tt_hal_insns_per_tick(void) { return 0; }

void *tt_hal_arena(size_t *size) {
    *size = sizeof(tt_arena_buf);
    return tt_arena_buf;
}

void tt_hal_poke(uint32_t addr, uint32_t value) {
    uint32_t off = addr - TT_HOST_RAM_BASE;
    char detail[64];
    if (addr >= TT_HOST_RAM_BASE && off <= sizeof(tt_arena_buf) - 4u) {
        memcpy(tt_arena_buf + off, &value, 4);
        return;
    }
    snprintf(detail, sizeof(detail), "exc=4 cfsr=00000082 mmfar=%08x", (unsigned)addr);
    tt_hal_fault("memmanage", detail);
}

void tt_hal_fault(const char *kind, const char *detail) {
    printf("!FAULT %s %s\n", kind, detail);
    fflush(stdout);
    exit(TT_EXIT_FAULT);
}

void tt_hal_exit(int code) {
    fflush(stdout);
    exit(code);
}

const char *tt_hal_board(void) { return "host"; }
