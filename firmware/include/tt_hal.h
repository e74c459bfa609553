/* tt_hal.h — the hardware abstraction the client firmware runs on.
 *
 * Two ports implement it: port/host (POSIX stdio + files; for parity tests and a fast host
 * executable) and port/cm4 (bare-metal Cortex-M on QEMU's MPS2 boards: CMSDK UART0 with WFI
 * + RX interrupt, semihosting files and exit codes, MPU-enforced RAM budget, fault handler
 * that prints "!FAULT ..." on the UART and exits with TT_EXIT_FAULT).
 * See ../shared/reference/qemu-cortex-m.md for the measured facts behind the cm4 port. */
#ifndef TT_HAL_H
#define TT_HAL_H
#include <stddef.h>
#include <stdint.h>

#define TT_EXIT_OK 0
#define TT_EXIT_FAULT 3

void tt_hal_init(void);

/* UART (host port: stdout / stdin). */
void tt_hal_putc(char c);
void tt_hal_write_str(const char *s);
/* Blocking read of one line without its '\n' (NUL-terminated, truncated to max-1);
 * returns its length, or -1 at end of input. */
int tt_hal_read_line(char *buf, int max);
/* Raw bytes, binary-safe (any byte value; no line handling).  The bytes that follow a
 * command line's '\n' are kept for it (cm4: RX ring buffer; host: stdin's buffer).
 * tt_hal_read_bytes blocks until exactly n bytes are read; returns n, or fewer at end of
 * input (host port only).  tt_hal_write_bytes sends n bytes (host: flushed). */
int32_t tt_hal_read_bytes(void *buf, uint32_t n);
void tt_hal_write_bytes(const void *buf, uint32_t n);

/* Bulk files (cm4 port: semihosting SYS_OPEN/READ/WRITE/SEEK/CLOSE relative to QEMU's cwd). */
typedef int32_t tt_file;
tt_file tt_hal_open(const char *path, int for_write);   /* < 0 on error */
int32_t tt_hal_read(tt_file f, void *buf, uint32_t n);   /* bytes read (< n at end of file), < 0 on error */
int32_t tt_hal_write(tt_file f, const void *buf, uint32_t n); /* 0 on success */
int32_t tt_hal_seek(tt_file f, uint32_t pos);            /* 0 on success */
void tt_hal_close(tt_file f);

/* A free-running counter for compute regions.  cm4: MPS2 FPGAIO COUNTER (25 MHz virtual
 * clock; with QEMU -icount shift=0 one tick = TT_HAL_INSNS_PER_TICK instructions).
 * host: 0 (the host measures nothing). */
uint32_t tt_hal_ticks(void);
uint32_t tt_hal_insns_per_tick(void);

/* The static training arena and its size in bytes (cm4: sized by the build, TT_ARENA_BYTES). */
void *tt_hal_arena(size_t *size);

/* Debug: store `value` at `addr` (to prove the MPU budget in tests). */
void tt_hal_poke(uint32_t addr, uint32_t value);

/* Report a firmware-detected fault ("!FAULT <kind> <detail>") and exit with TT_EXIT_FAULT. */
void tt_hal_fault(const char *kind, const char *detail) __attribute__((noreturn));

void tt_hal_exit(int code) __attribute__((noreturn));

/* A short board name for the banner ("mps2-an386", "host"). */
const char *tt_hal_board(void);
#endif
