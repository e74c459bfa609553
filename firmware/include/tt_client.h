/* tt_client.h — the FL client that runs on every firmware device.
 *
 * Host <-> firmware protocol, version 1 (docs/firmware.md has the full description).
 * Control goes over the UART as short ASCII lines; weights and data go through files
 * (semihosting on the cm4 port, because each byte into QEMU's UART costs the host ~33 us).
 * W and U (below) move round.bin / update.bin over the UART itself instead, for a realistic
 * serial cost: binary-safe, flow-controlled (QEMU holds host bytes back until the guest reads
 * them), ~36 KiB/s into an emulated device; the host port does the same over stdin/stdout.
 *
 * Boot: the firmware prints  "RDY tinytwin-fw 1 board=<name> arena=<bytes>\n".
 * Commands (one line each), replies (one line each):
 *   "T"            train one round: read round.bin (+ data.bin), write update.bin
 *                  -> "OK T steps=<int> ce_sum=<%.9g> ticks=<uint> insns=<uint> arena_used=<bytes> arena_peak=<bytes>"
 *   "M"            DecFedAvg mix: read mix.bin, write mixed.bin            -> "OK M ticks=<uint> insns=<uint>"
 *   "G"            Gist merge: read gist.bin, write merged.bin              -> "OK G ticks=<uint> insns=<uint>"
 *   "W <nbytes>"   the host then sends exactly nbytes raw binary bytes (any value, no framing
 *                  or escaping; the line reader never sees them); they are streamed into
 *                  round.bin in small chunks (the file is the device's flash / receive buffer)
 *                  -> "OK W bytes=<n> ticks=<uint> insns=<uint>"
 *                  (ticks: virtual time of the transfer, including the waits for the host's
 *                  bytes, so not deterministic).  All nbytes are consumed even when round.bin
 *                  cannot be written ("ERR ..." after them).  A normal "T" then trains from it.
 *   "U"            send update.bin back over the UART -> "OK U bytes=<n>\n" followed immediately
 *                  by exactly n raw bytes (the file as it is: the last T's update)
 *   "P <hexaddr>"  store 0xDEADBEEF at addr (MPU test)                     -> "OK P" (or a fault)
 *   "Q <code>"     exit with <code>
 * A bad command or file -> "ERR <reason>" and the loop goes on.  A fault (arena exhausted,
 * MPU violation, bus/usage fault) -> "!FAULT <kind> <detail>" and exit code 3.
 *
 * All files are little-endian.
 * round.bin:  u32 magic 'TTR1' (0x31525454), i32 n_layers, i32 sizes[n_layers+1], i32 relu[n_layers],
 *             i32 epochs, i32 batch_size, i32 n_samples, f32 lr, f32 momentum, f32 weight_decay,
 *             f32 params[n_params], i32 order[epochs * n_samples]
 *             (order = positions into data.bin, epoch after epoch: the simulator's batch order,
 *             tinytwin.rng.device_permutations; batches are consecutive runs of batch_size, a short
 *             last batch).  The order is read batch by batch, never held whole in RAM.
 * data.bin:   u32 magic 'TTD1' (0x31445454), i32 n_samples, i32 n_features, f32 x[n_samples * n_features],
 *             i32 y[n_samples].  Samples are read batch by batch (the shard lives in "flash"/storage).
 * update.bin: f32 params[n_params] after local training.
 * mix.bin:    u32 magic 'TTM1' (0x314D5454), i32 n_params, i32 n_models, f32 weights[n_models],
 *             f32 models[n_models][n_params]          (model 0 is the device's own)
 * mixed.bin / merged.bin: f32 params[n_params]
 * gist.bin:   u32 magic 'TTG1' (0x31475454), i32 n_params, i32 n_segments, f32 a_local, f32 own[n_params],
 *             then per segment: f32 a, u8 bitmap[ceil(n_params/8)], i32 nnz, f32 values[nnz]
 */
#ifndef TT_CLIENT_H
#define TT_CLIENT_H
#define TT_PROTOCOL_VERSION 1
/* Run the command loop until "Q"; returns the exit code. */
int tt_client_main(void);
#endif
