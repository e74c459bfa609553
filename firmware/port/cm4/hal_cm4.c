/* hal_cm4.c — tt_hal.h on QEMU's MPS2 boards (mps2-an385 / an386 / an500).
 *
 * Facts used (../shared/reference/qemu-cortex-m.md):
 *  - UART: CMSDK APB UART0 at 0x40004000, RX interrupt = NVIC IRQ 0.  The driver sleeps in
 *    WFI until the RX interrupt (a busy-polling driver costs the host a whole core per idle
 *    instance); the ISR moves bytes into a small ring buffer.  QEMU holds host bytes back
 *    while RX is full, so a full ring just leaves the byte in the UART (no loss).
 *  - Bulk files: semihosting (bkpt 0xAB) SYS_OPEN/READ/WRITE/SEEK/CLOSE relative to QEMU's
 *    cwd; exit codes through SYS_EXIT_EXTENDED.
 *  - Ticks: CMSDK APB TIMER0 (0x40000000) counting down at 25 MHz of QEMU's virtual clock;
 *    with -icount shift=0 one tick is exactly 40 instructions (DWT->CYCCNT is not emulated).
 *    Not the free-running FPGAIO COUNTER: its phase relative to the instruction stream
 *    depends on when the host's bytes arrive (how many WFI wake-ups and ISR runs the line
 *    took), so a compute region of fixed length read 126638 or 126639 ticks at random.
 *    tt_hal_ticks() therefore restarts the timer each time it reads it (writing VALUE
 *    restarts the tick phase at that instruction): the delta between two calls is
 *    floor((instructions between them + a fixed offset) / 40), whatever ran before.  Each
 *    call drops the fraction of a tick it interrupts; for compute regions that is the point.
 *  - RAM budget: QEMU gives 4 MB, so the budget is enforced by the MPU (no background region):
 *    code read-only, RAM = exactly the linker's RAM region (one region per set bit of its
 *    size), peripherals device/XN.  Anything else — past the budget, below RAM (stack
 *    overflow), NULL writes — is a MemManage fault, reported on the UART as
 *    "!FAULT <kind> exc=<n> cfsr=<hex> hfsr=<hex> mmfar=<hex> bfar=<hex> pc=<hex>" and exit code 3. */
#include <stddef.h>
#include <stdint.h>

#include "tt_hal.h"

#ifndef TT_ARENA_BYTES
#error "TT_ARENA_BYTES must be defined by the build"
#endif
#ifndef TT_BOARD
#define TT_BOARD "mps2"
#endif

#define REG(a) (*(volatile uint32_t *)(a))

/* CMSDK APB UART0 */
#define UART_DATA REG(0x40004000u)
#define UART_STATE REG(0x40004004u)     /* bit0 TX full, bit1 RX full */
#define UART_CTRL REG(0x40004008u)      /* bit0 TX en, bit1 RX en, bit3 RX int en */
#define UART_INTSTATUS REG(0x4000400Cu) /* write 2: clear RX interrupt */
#define UART_BAUDDIV REG(0x40004010u)
#define NVIC_ISER0 REG(0xE000E100u)
#define NVIC_ICPR0 REG(0xE000E280u)

/* System control block / MPU */
#define SCB_SHCSR REG(0xE000ED24u)
#define SCB_CFSR REG(0xE000ED28u)
#define SCB_HFSR REG(0xE000ED2Cu)
#define SCB_MMFAR REG(0xE000ED34u)
#define SCB_BFAR REG(0xE000ED38u)
#define MPU_CTRL REG(0xE000ED94u)
#define MPU_RNR REG(0xE000ED98u)
#define MPU_RBAR REG(0xE000ED9Cu)
#define MPU_RASR REG(0xE000EDA0u)

#define TIMER0_CTRL REG(0x40000000u)     /* bit0 enable */
#define TIMER0_VALUE REG(0x40000004u)    /* counts down; a write restarts the count */
#define TIMER0_RELOAD REG(0x40000008u)
#define TT_HAL_INSNS_PER_TICK 40u

/* Semihosting operations */
#define SYS_OPEN 0x01u
#define SYS_CLOSE 0x02u
#define SYS_WRITE 0x05u
#define SYS_READ 0x06u
#define SYS_SEEK 0x0Au
#define SYS_EXIT_EXTENDED 0x20u
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

extern uint32_t _ram_start[], _ram_end[], _flash_end[];

/* The training arena: in .bss, so a model too large for the RAM budget fails at link time. */
unsigned char tt_arena_buf[TT_ARENA_BYTES] __attribute__((aligned(8)));

/* GCC may emit calls to these for struct copies or zeroing even at -ffreestanding; the
 * library emits none (firmware/lib/tt_arena.c), this port provides them just in case.
 * Built with -fno-tree-loop-distribute-patterns so they do not call themselves. */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--) *d++ = *s++;
    return dst;
}
void *memset(void *dst, int c, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

/* ------------------------------------------------------------------ semihosting */

static int32_t semihost(uint32_t op, const void *arg) {
    register uint32_t r0 __asm("r0") = op;
    register const void *r1 __asm("r1") = arg;
    __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

void tt_hal_exit(int code) {
    uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    semihost(SYS_EXIT_EXTENDED, block);
    for (;;) __asm volatile("wfi");   /* only without -semihosting-config */
}

static uint32_t str_len(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

tt_file tt_hal_open(const char *path, int for_write) {
    uint32_t block[3] = {(uint32_t)(uintptr_t)path, for_write ? 5u /* "wb" */ : 1u /* "rb" */, str_len(path)};
    return semihost(SYS_OPEN, block);
}

int32_t tt_hal_read(tt_file f, void *buf, uint32_t n) {
    uint32_t block[3] = {(uint32_t)f, (uint32_t)(uintptr_t)buf, n};
    int32_t left = semihost(SYS_READ, block);   /* bytes NOT read */
    if (left < 0 || (uint32_t)left > n) return -1;
    return (int32_t)(n - (uint32_t)left);
}

int32_t tt_hal_write(tt_file f, const void *buf, uint32_t n) {
    uint32_t block[3] = {(uint32_t)f, (uint32_t)(uintptr_t)buf, n};
    return semihost(SYS_WRITE, block) == 0 ? 0 : -1;   /* bytes NOT written */
}

int32_t tt_hal_seek(tt_file f, uint32_t pos) {
    uint32_t block[2] = {(uint32_t)f, pos};
    return semihost(SYS_SEEK, block) == 0 ? 0 : -1;
}

void tt_hal_close(tt_file f) {
    uint32_t block[1] = {(uint32_t)f};
    semihost(SYS_CLOSE, block);
}

/* ------------------------------------------------------------------ UART */

#define RX_RING 128u   /* power of two; commands are short lines, bulk bytes (W) stream through */
static volatile uint8_t g_rx[RX_RING];
static volatile uint32_t g_rx_head, g_rx_tail;   /* head: ISR writes; tail: reader */

/* Move bytes from the UART into the ring while there is room (interrupts off or in the ISR). */
static void rx_drain(void) {
    while ((UART_STATE & 2u) && g_rx_head - g_rx_tail < RX_RING) {
        g_rx[g_rx_head & (RX_RING - 1u)] = (uint8_t)UART_DATA;
        g_rx_head++;
    }
}

void UART0RX_Handler(void) {
    UART_INTSTATUS = 2u;   /* clear first: a byte arriving during the drain re-raises it */
    rx_drain();
}

static char uart_getc(void) {
    for (;;) {
        __asm volatile("cpsid i" ::: "memory");
        rx_drain();   /* also picks up a byte left in the UART while the ring was full */
        if (g_rx_head != g_rx_tail) {
            char c = (char)g_rx[g_rx_tail & (RX_RING - 1u)];
            g_rx_tail++;
            __asm volatile("cpsie i" ::: "memory");
            return c;
        }
        /* With PRIMASK set a pending RX interrupt still ends WFI, and it cannot slip in
         * between the emptiness check and the WFI (no lost wake-up). */
        __asm volatile("dsb\n wfi" ::: "memory");
        __asm volatile("cpsie i\n isb" ::: "memory");   /* the ISR runs here */
    }
}

void tt_hal_putc(char c) {
    while (UART_STATE & 1u) {
    }
    UART_DATA = (uint8_t)c;
}

void tt_hal_write_str(const char *s) {
    while (*s) tt_hal_putc(*s++);
}

/* Binary-safe: the ring holds bytes, never lines.  Flow control end to end: when the ring
 * is full the ISR leaves the byte in the UART's RX register, and QEMU feeds the next host
 * byte only once that register is read (the host's bytes wait in its pipe), so a transfer
 * of any length loses nothing however slowly the caller drains it (a semihosting write
 * between chunks, say). */
int32_t tt_hal_read_bytes(void *buf, uint32_t n) {
    uint8_t *p = (uint8_t *)buf;
    uint32_t i;
    for (i = 0; i < n; i++) p[i] = (uint8_t)uart_getc();
    return (int32_t)n;
}

void tt_hal_write_bytes(const void *buf, uint32_t n) {
    const uint8_t *p = (const uint8_t *)buf;
    uint32_t i;
    for (i = 0; i < n; i++) tt_hal_putc((char)p[i]);
}

int tt_hal_read_line(char *buf, int max) {
    int n = 0;
    for (;;) {
        char c = uart_getc();
        if (c == '\n') break;
        if (c == '\r') continue;
        if (n < max - 1) buf[n++] = c;
    }
    buf[n] = '\0';
    return n;
}

/* ------------------------------------------------------------------ MPU */

/* RASR fields (ARMv7-M PMSA) */
#define RASR_XN (1u << 28)
#define RASR_AP_RW (3u << 24)   /* privileged and unprivileged read/write */
#define RASR_AP_RO (6u << 24)   /* read-only */
#define RASR_S (1u << 18)
#define RASR_C (1u << 17)
#define RASR_B (1u << 16)
#define RASR_SIZE(log2) (((log2) - 1u) << 1)
#define RASR_EN 1u

static void mpu_region(uint32_t n, uint32_t base, uint32_t log2size, uint32_t attrs) {
    MPU_RNR = n;
    MPU_RBAR = base;
    MPU_RASR = attrs | RASR_SIZE(log2size) | RASR_EN;
}

static uint32_t log2_ceil(uint32_t v) {
    uint32_t l = 5;   /* 32 bytes: the smallest MPU region */
    while (l < 31 && (1u << l) < v) l++;
    return l;
}

static void mpu_init(void) {
    uint32_t base = (uint32_t)(uintptr_t)_ram_start;
    uint32_t size = (uint32_t)((uintptr_t)_ram_end - (uintptr_t)_ram_start);
    uint32_t region = 1, bit;
    __asm volatile("dsb" ::: "memory");
    MPU_CTRL = 0;
    /* 0: code + rodata + .data's load image at 0x0, read-only, executable. */
    mpu_region(0, 0x00000000u, log2_ceil((uint32_t)(uintptr_t)_flash_end), RASR_AP_RO | RASR_C);
    /* 1..6: RAM budget as a sum of naturally aligned powers of two (largest first, so each
     * region's base is aligned to its size).  The build rounds the budget so it fits. */
    for (bit = 31; bit >= 5 && region <= 6; bit--) {
        if (size & (1u << bit)) {
            mpu_region(region++, base, bit, RASR_AP_RW | RASR_XN | RASR_C | RASR_B);
            base += 1u << bit;
        }
    }
    /* 7: peripherals (UART, timers), 512 MB at 0x40000000, shared device, never executable. */
    mpu_region(7, 0x40000000u, 29, RASR_AP_RW | RASR_XN | RASR_S | RASR_B);
    /* Separate MemManage/BusFault/UsageFault handlers (the CFSR says the same either way). */
    SCB_SHCSR |= (1u << 16) | (1u << 17) | (1u << 18);
    MPU_CTRL = 1u;   /* ENABLE; PRIVDEFENA = 0: no background region */
    __asm volatile("dsb\n isb" ::: "memory");
}

/* ------------------------------------------------------------------ the rest of tt_hal.h */

void tt_hal_init(void) {
    mpu_init();
    TIMER0_RELOAD = 0xFFFFFFFFu;
    TIMER0_VALUE = 0xFFFFFFFFu;
    TIMER0_CTRL = 1u;
    UART_BAUDDIV = 16u;
    UART_CTRL = 1u | 2u | 8u;   /* TX, RX, RX interrupt */
    NVIC_ICPR0 = 1u;
    NVIC_ISER0 = 1u;            /* IRQ 0: UART0 RX (wakes WFI) */
}

static uint32_t g_tick_base;   /* ticks counted before the timer's last restart */

uint32_t tt_hal_ticks(void) {
    g_tick_base += 0xFFFFFFFFu - TIMER0_VALUE;
    TIMER0_VALUE = 0xFFFFFFFFu;   /* restart: the next delta no longer depends on the phase */
    return g_tick_base;
}

uint32_t tt_hal_insns_per_tick(void) { return TT_HAL_INSNS_PER_TICK; }

void *tt_hal_arena(size_t *size) {
    *size = sizeof(tt_arena_buf);
    return tt_arena_buf;
}

void tt_hal_poke(uint32_t addr, uint32_t value) {
    *(volatile uint32_t *)(uintptr_t)addr = value;
    __asm volatile("dsb" ::: "memory");
}

const char *tt_hal_board(void) { return TT_BOARD; }

void tt_hal_fault(const char *kind, const char *detail) {
    tt_hal_write_str("!FAULT ");
    tt_hal_write_str(kind);
    tt_hal_putc(' ');
    tt_hal_write_str(detail);
    tt_hal_putc('\n');
    tt_hal_exit(TT_EXIT_FAULT);
}

/* ------------------------------------------------------------------ fault handler */

static void put_hex(uint32_t v) {
    static const char hexd[] = "0123456789abcdef";
    int i;
    for (i = 7; i >= 0; i--) tt_hal_putc(hexd[(v >> (4 * i)) & 0xfu]);
}

static void put_dec(uint32_t v) {
    char tmp[10];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n) tt_hal_putc(tmp[--n]);
}

/* Called on the MSP with the exception frame (or what should be one) and EXC_RETURN. */
void tt_fault_report(const uint32_t *frame, uint32_t exc_return) __attribute__((used, noreturn));
void tt_fault_report(const uint32_t *frame, uint32_t exc_return) {
    uint32_t ipsr, cfsr = SCB_CFSR, pc = 0;
    uintptr_t f = (uintptr_t)frame;
    const char *kind;
    (void)exc_return;
    __asm volatile("mrs %0, ipsr" : "=r"(ipsr));
    ipsr &= 0x1ffu;
    /* Read the stacked PC only when the frame really lies in RAM: after a stacking fault
     * (MSTKERR/BSTKERR, a stack overflow) it does not, and reading it would lock up. */
    if (!(cfsr & ((1u << 4) | (1u << 12))) && f >= (uintptr_t)_ram_start && f + 32u <= (uintptr_t)_ram_end)
        pc = frame[6];
    if (cfsr & 0xffu) kind = "memmanage";
    else if (cfsr & 0xff00u) kind = "busfault";
    else if (cfsr & 0xffff0000u) kind = "usagefault";
    else if (ipsr == 3u) kind = "hardfault";
    else if (ipsr == 2u) kind = "nmi";
    else kind = "exception";
    tt_hal_write_str("!FAULT ");
    tt_hal_write_str(kind);
    tt_hal_write_str(" exc=");
    put_dec(ipsr);
    tt_hal_write_str(" cfsr=");
    put_hex(cfsr);
    tt_hal_write_str(" hfsr=");
    put_hex(SCB_HFSR);
    tt_hal_write_str(" mmfar=");
    put_hex(SCB_MMFAR);
    tt_hal_write_str(" bfar=");
    put_hex(SCB_BFAR);
    tt_hal_write_str(" pc=");
    put_hex(pc);
    tt_hal_putc('\n');
    tt_hal_exit(TT_EXIT_FAULT);
}

__attribute__((naked)) void Fault_Handler(void) {
    __asm volatile(
        "tst lr, #4\n"
        "ite eq\n"
        "mrseq r0, msp\n"
        "mrsne r0, psp\n"
        "mov r1, lr\n"
        "b tt_fault_report\n");
}
