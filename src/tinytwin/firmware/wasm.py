"""A WebAssembly device: the firmware client's wasm32-wasi module under Wasmtime.

Why it is a :class:`tinytwin.firmware.qemu.FirmwareDevice`: the module speaks protocol v1 on
its (WASI) stdin/stdout and reads and writes the same files in its work folder as a QEMU
board, so the same driver trains, merges, times out and reports faults for both.  The
process is :mod:`tinytwin.firmware.wasm_run` (Wasmtime with the device's memory limit and
fuel metering); ``insns`` of a reply are the WebAssembly operators the command executed.

Modelled device time = operators x :data:`CYCLES_PER_OP` / the profile's clock, as the boards'
instructions x CPI / clock.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tinytwin.firmware.qemu import FirmwareDevice
from tinytwin.firmware.wasm_build import WasmModule

__all__ = ["CYCLES_PER_OP", "WasmDevice", "wasm_argv"]

# estimate: Cranelift turns a float32 multiply-accumulate loop's ~10 wasm operators (local.get,
# f32.load, f32.mul, f32.add, i32.add, br_if ...) into ~5-6 native instructions (locals live in
# registers, bounds checks elided by guard pages); an in-order/narrow Arm core (Cortex-A53/A72)
# retires about one of those per cycle -> ~0.6 cycles per operator.  benchmarks/bench_wasm.py
# measures operators per second on this machine beside it.
CYCLES_PER_OP = 0.6

_RUNNER = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from tinytwin.firmware.wasm_run import main; sys.exit(main(sys.argv[2:]))"
)


def wasm_argv(module: WasmModule, memory_bytes: int) -> list[str]:
    """The command line of one WebAssembly device process (this interpreter, this package)."""
    src = str(Path(__file__).resolve().parents[2])
    return [sys.executable, "-c", _RUNNER, src, str(module.cwasm), "--memory-bytes", str(int(memory_bytes))]


class WasmDevice(FirmwareDevice):
    """The client module under Wasmtime with a linear-memory limit of ``memory_bytes``."""

    def __init__(
        self,
        module: WasmModule,
        workdir: Path,
        memory_bytes: int,
        timeout: float = 60.0,
        boot_timeout: float = 20.0,
        name: str = "",
    ) -> None:
        self.module = module
        self.memory_bytes = int(memory_bytes)
        super().__init__(
            wasm_argv(module, memory_bytes), workdir, name or f"wasm@{Path(workdir).name}", timeout, boot_timeout
        )
