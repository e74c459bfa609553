/* main_host.c — the firmware client as a host executable (same protocol on stdin/stdout). */
#include "tt_client.h"
#include "tt_hal.h"

int main(void) {
    tt_hal_init();
    tt_hal_exit(tt_client_main());
}
