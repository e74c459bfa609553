/* main_cm4.c — the bare-metal entry: bring up the board, run the client loop.
 * startup.c turns main's return value into QEMU's exit status (semihosting). */
#include "tt_client.h"
#include "tt_hal.h"

int main(void) {
    tt_hal_init();
    return tt_client_main();
}
