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

# estimate: fuel counts every WebAssembly operator, local.get/local.set included, which a compiler
# keeps in registers.  For the same training round the Cortex-M4 build executes 0.35 instructions
# per operator (benchmarks/bench_wasm.py: 2 717 960 M4 instructions vs 7 783 377 operators for a
# local epoch; 0.35 for the matrix product too); Cranelift's AArch64 code is of the same order,
# and an A53/A72-class core retires about one such instruction per cycle in these dependent
# float loops -> ~0.35 cycles per operator.  Seed 004's Table 15 says the Raspberry Pi 3 needs
# ~3.5x the Pi 4's cycles for the same module (docs/wasm.md), so this is per-profile in truth.
CYCLES_PER_OP = 0.35

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
