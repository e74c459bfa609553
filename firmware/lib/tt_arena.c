/* tt_arena.c — the bump allocator behind every firmware buffer (see tt_arena.h).
 *
 * NOTE for the ports/build (memset/memcpy policy): nothing in firmware/lib calls or needs
 * memset/memcpy/memmove or any other libc/libm symbol.  The library's fill and copy loops
 * are written so that GCC's loop-distribution pass cannot turn them into memset/memcpy
 * calls (see tt_fill/tt_copy in tt_nn.c), checked with arm-none-eabi-nm -u at -O2/-O3/-Os.
 * A port that links with -nostdlib therefore needs no libc for the library; whatever the
 * port's own code uses (the client's file buffers, struct copies) is the port's business.
 *
 * The state is a single static arena: firmware has one RAM budget.  Allocation rounds
 * every request up to 8 bytes, so used() is always a multiple of 8 and the sizes that
 * tt_mlp_arena_bytes predicts are exact. */
#include "tt_arena.h"

#include <stdint.h>

#define TT_ALIGN ((size_t)8)

static unsigned char *g_base;
static size_t g_size, g_used, g_peak;

void tt_arena_init(void *buf, size_t size) {
    /* Align the base up; the bytes skipped are not usable and not counted in size(). */
    size_t pad = (TT_ALIGN - ((size_t)(uintptr_t)buf & (TT_ALIGN - 1))) & (TT_ALIGN - 1);
    if (buf == NULL || size < pad) {
        g_base = NULL;
        g_size = 0;
    } else {
        g_base = (unsigned char *)buf + pad;
        g_size = (size - pad) & ~(TT_ALIGN - 1);
    }
    g_used = 0;
    g_peak = 0;
}

void *tt_arena_alloc(size_t bytes) {
    size_t rounded;
    void *p;
    if (g_base == NULL || bytes > g_size) return NULL;  /* also guards the rounding overflow */
    rounded = (bytes + (TT_ALIGN - 1)) & ~(TT_ALIGN - 1);
    if (rounded > g_size - g_used) return NULL;
    p = g_base + g_used;
    g_used += rounded;
    if (g_used > g_peak) g_peak = g_used;
    return p;
}

size_t tt_arena_used(void) { return g_used; }
size_t tt_arena_peak(void) { return g_peak; }
size_t tt_arena_size(void) { return g_size; }
void tt_arena_reset(void) { g_used = 0; }
