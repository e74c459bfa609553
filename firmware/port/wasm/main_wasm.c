/* main_wasm.c — the firmware client as a WebAssembly (wasm32-wasi) command module. */
#include "tt_client.h"
#include "tt_hal.h"

int main(void) {
    tt_hal_init();
    tt_hal_exit(tt_client_main());
}
