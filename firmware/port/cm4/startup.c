/* startup.c — vector table and reset for QEMU's MPS2 Cortex-M boards (an385 M3, an386 M4F,
 * an500 M7).
 *
 * Why this shape (see ../shared/reference/qemu-cortex-m.md, sections 3 and 6):
 *  - The application runs in thread mode on the PSP, whose stack sits FIRST at the bottom of
 *    RAM (link.ld).  An overflow runs below 0x20000000, where the MPU has no region, and
 *    faults at once instead of silently corrupting .data/.bss; the exception handlers keep a
 *    valid stack on the MSP (a separate block above the application stack) to report it.
 *  - The FPU is enabled before any C code runs, because hard-float code may touch s0-s31
 *    anywhere (even in copies).
 *  - main's return value leaves through semihosting SYS_EXIT_EXTENDED, so QEMU's exit status
 *    is the firmware's exit code. */
#include <stdint.h>

#include "tt_hal.h"

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[];
extern uint32_t _estack_msp[], _estack_app[];

int main(void);
void Reset_Handler(void);
void Fault_Handler(void);      /* hal_cm4.c: reports "!FAULT ..." and exits with code 3 */
void UART0RX_Handler(void);    /* hal_cm4.c */

/* Runs on the PSP (set up by Reset_Handler): initialise memory, then main. */
void tt_c_startup(void) __attribute__((noreturn, used));
void tt_c_startup(void) {
    uint32_t *src = _sidata, *dst = _sdata;
    while (dst < _edata) *dst++ = *src++;
    for (dst = _sbss; dst < _ebss; dst++) *dst = 0;
    tt_hal_exit(main());
}

__attribute__((naked, noreturn)) void Reset_Handler(void) {
    __asm volatile(
#if defined(__ARM_FP)
        /* CPACR: full access to CP10/CP11 (the FPU). */
        "ldr r0, =0xE000ED88\n"
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
#endif
        /* Thread mode on the PSP (CONTROL.SPSEL = 1), still privileged. */
        "ldr r0, =_estack_app\n"
        "msr psp, r0\n"
        "movs r0, #2\n"
        "msr control, r0\n"
        "isb\n"
        "b tt_c_startup\n");
}

/* 16 system exceptions + 32 external interrupts (MPS2: UART0 RX is IRQ 0). */
__attribute__((section(".vectors"), used)) static void (*const g_vectors[48])(void) = {
    (void (*)(void))_estack_msp,
    Reset_Handler,
    Fault_Handler,   /* NMI */
    Fault_Handler,   /* HardFault */
    Fault_Handler,   /* MemManage */
    Fault_Handler,   /* BusFault */
    Fault_Handler,   /* UsageFault */
    0, 0, 0, 0,
    Fault_Handler,   /* SVCall */
    Fault_Handler,   /* DebugMonitor */
    0,
    Fault_Handler,   /* PendSV */
    Fault_Handler,   /* SysTick */
    UART0RX_Handler, /* IRQ 0: UART0 RX */
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler,
};
