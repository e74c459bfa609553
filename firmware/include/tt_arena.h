/* tt_arena.h — one static arena; bump allocation during start-up only.
 * Why: microcontroller firmware must know its peak RAM before it runs; a bump allocator over
 * a buffer sized at build time (TT_ARENA_BYTES, from the device profile's RAM budget) makes
 * the peak a number we can report and check. */
#ifndef TT_ARENA_H
#define TT_ARENA_H
#include <stddef.h>

void tt_arena_init(void *buf, size_t size);
/* 8-byte aligned; returns NULL when the arena is exhausted (never partially allocates). */
void *tt_arena_alloc(size_t bytes);
size_t tt_arena_used(void);
size_t tt_arena_peak(void);
size_t tt_arena_size(void);
/* Forget every allocation (the peak is kept). */
void tt_arena_reset(void);
#endif
