"""The process of one WebAssembly device: the C client's wasm32-wasi module under Wasmtime.

Why a process of its own, started like QEMU: a WebAssembly device then speaks protocol v1
over its stdin/stdout exactly as a QEMU board does, so every driver of
:class:`tinytwin.firmware.qemu.FirmwareDevice` (parity tests, the emulation twin's device
processes, timeouts, fault handling) runs it unchanged.  The module's WASI stdin/stdout are
this process's; its files are the device's work folder (the current directory, preopened as
fd 3).

Two things make it a *device* rather than a program:

- **Memory**: the Store's limit is the device's RAM budget.  A module whose static image
  (data + stack + the training arena) needs more linear memory than that is refused before
  it starts with ``!FAULT memory need=<bytes> have=<bytes>`` (exit code 3), the same line
  Wasmtime's own limiter would turn into a failed instantiation; ``memory.grow`` past the
  limit fails inside the module.
- **Fuel**: fuel metering is on, one unit per WebAssembly operator; the module's
  ``tinytwin.ticks`` import reads the fuel consumed so far, so the client's ``insns=`` are
  the module's executed operators — deterministic, like QEMU's ``-icount`` counts.

Wasmtime traps (out-of-bounds access, unreachable, stack overflow) become ``!FAULT <kind>
<message>`` and exit code 3.  Only :mod:`wasmtime` is imported here (start-up time).
Usage: ``python -m tinytwin.firmware.wasm_run MODULE [--memory-bytes N]`` where MODULE is the
Wasmtime-precompiled ``.cwasm`` (or a ``.wasm``) of :func:`tinytwin.firmware.wasm_build.build_wasm`.
"""

from __future__ import annotations

import os
import sys

import wasmtime

PAGE_BYTES = 65536
FUEL = 1 << 62  # effectively unlimited: hangs are caught by the host's timeouts
EXIT_FAULT = 3


def engine() -> wasmtime.Engine:
    """The engine every WebAssembly device and the build's precompilation use (they must
    agree, or a precompiled module is refused)."""
    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    cfg.cranelift_opt_level = "speed"
    return wasmtime.Engine(cfg)


def load_module(eng: wasmtime.Engine, path: str) -> wasmtime.Module:
    if path.endswith(".cwasm"):
        return wasmtime.Module.deserialize_file(eng, path)
    return wasmtime.Module.from_file(eng, path)


def memory_min_bytes(module: wasmtime.Module) -> int:
    """Bytes of linear memory the module needs at instantiation (its memory's minimum)."""
    for exp in module.exports:
        if isinstance(exp.type, wasmtime.MemoryType):
            return int(exp.type.limits.min) * PAGE_BYTES
    return 0


def _say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def _trap_kind(trap: wasmtime.Trap) -> str:
    code = trap.trap_code
    if code == wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS:
        return "memory"
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        return "stack"
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return "fuel"
    return "trap"


def _trap_detail(trap: wasmtime.Trap) -> str:
    """Wasmtime's reasons on one line, e.g. "memory_out_of_bounds: memory fault at wasm address
    0x10000 in linear memory of size 0x10000; wasm trap: out of bounds memory access"."""
    cause = trap.message.split("Caused by:")[-1]
    reasons = [ln.strip().split(": ", 1)[-1] for ln in cause.splitlines() if ln.strip()]
    code = trap.trap_code
    return f"{code.name.lower() if code else 'trap'}: {'; '.join(reasons[:2])}"


def run(path: str, memory_bytes: int = 0) -> int:
    """Instantiate and run the module on this process's stdin/stdout; return its exit code."""
    eng = engine()
    module = load_module(eng, path)
    need = memory_min_bytes(module)
    if memory_bytes and need > memory_bytes:
        _say(f"!FAULT memory need={need} have={memory_bytes} (linear memory at start-up > the device's limit)")
        return EXIT_FAULT
    store = wasmtime.Store(eng)
    if memory_bytes:
        store.set_limits(memory_size=memory_bytes)
    store.set_fuel(FUEL)
    wasi = wasmtime.WasiConfig()
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.preopen_dir(".", ".")
    store.set_wasi(wasi)
    linker = wasmtime.Linker(eng)
    linker.define_wasi()

    def ticks() -> int:
        used = (FUEL - store.get_fuel()) & 0xFFFFFFFF
        return used - (1 << 32) if used >= 1 << 31 else used  # an i32 result: the C side reads it as uint32_t

    linker.define_func("tinytwin", "ticks", wasmtime.FuncType([], [wasmtime.ValType.i32()]), ticks)
    try:
        instance = linker.instantiate(store, module)
    except wasmtime.WasmtimeError as exc:
        _say(f"!FAULT memory need={need} have={memory_bytes} ({str(exc).splitlines()[0]})")
        return EXIT_FAULT
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    try:
        start(store)
    except wasmtime.ExitTrap as exc:
        return int(exc.code)
    except wasmtime.Trap as trap:
        _say(f"!FAULT {_trap_kind(trap)} {_trap_detail(trap)}")
        return EXIT_FAULT
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python -m tinytwin.firmware.wasm_run MODULE [--memory-bytes N]", file=sys.stderr)
        return 2
    memory = 0
    if "--memory-bytes" in argv:
        memory = int(argv[argv.index("--memory-bytes") + 1])
    return run(argv[0], memory)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
