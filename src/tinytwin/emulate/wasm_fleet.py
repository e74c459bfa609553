"""Coordinator side of WebAssembly devices (``twin: wasm``): one module per group, its memory limit.

A fleet group with ``twin: wasm`` (or every group under ``tinytwin emulate --twin wasm``) runs
the project's C client compiled to wasm32-wasi under Wasmtime
(:class:`tinytwin.firmware.wasm.WasmDevice`) instead of numpy or QEMU.  It is driven exactly
like a firmware board — protocol v1, the same device-process bridge
(:class:`tinytwin.emulate.trainers.FirmwareTrainer`), the same fault handling — so the config
it gets is a ``firmware`` block with ``runtime: wasm``:

- the memory limit is the RAM the memory plan says is available for training on the
  group's profile (as a board's linker RAM region), checked here against the module's
  linear memory, so an oversized model is refused before any process starts;
- device time = WebAssembly operators (Wasmtime's fuel) x
  :data:`tinytwin.firmware.wasm.CYCLES_PER_OP` / the profile's clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinytwin.errors import TinyTwinError

WASM_BOARD = "wasm32-wasi"


def in_group(exc: TinyTwinError, group: Any) -> TinyTwinError:
    """``exc`` with the fleet group named in front of its message (same type, same attributes:
    ``type(exc)(message)`` would fail for errors that carry numbers, like the overflow in bytes)."""
    message = f"fleet group {group.name!r} ({group.profile.name}): {exc}"
    out = type(exc).__new__(type(exc), message)
    out.__dict__.update(exc.__dict__)
    out.args = (message,)
    return out


def wasm_group_config(group: Any, ram_available: int, arena: int, workroot: Path) -> dict[str, Any]:
    """The part of a ``firmware`` device config shared by a WebAssembly group's devices."""
    from tinytwin.firmware.wasm import CYCLES_PER_OP
    from tinytwin.firmware.wasm_build import build_wasm, check_memory, module_dict

    try:
        module = build_wasm(arena)
        check_memory(module, int(ram_available), who=f"WebAssembly device ({group.profile.name})")
    except TinyTwinError as exc:
        raise in_group(exc, group) from None
    image = {  # the firmware summary's fields (tinytwin.emulate.run_stats.firmware_summary)
        "elf": str(module.cwasm),
        "board": WASM_BOARD,
        "cpu": "wasm32 (Wasmtime)",
        "ram_bytes": int(ram_available),
        "arena_bytes": module.arena_bytes,
        "stack_bytes": module.stack_bytes,
        "msp_stack_bytes": 0,
        "text": module.code_bytes,
        "data": 0,
        "bss": module.memory_bytes,
    }
    return {
        "runtime": "wasm",
        "module": module_dict(module),
        "memory_bytes": int(ram_available),
        "image": image,
        "board": WASM_BOARD,
        "cpi": CYCLES_PER_OP,
    }


def check_wasm_groups(exp: Any, sizes: list[int]) -> None:
    """Refuse, before the run folder exists, a model (layer widths ``sizes``) whose module does
    not fit a ``twin: wasm`` group's memory limit (the training arena; merges are checked again when the configs are made)."""
    from tinytwin.firmware.build import required_arena_bytes

    wasm = {g.name for g, s in zip(exp.fleet.groups, exp.spec.fleet.groups) if s.twin == "wasm"}
    if not wasm:
        return
    a = exp.spec.algorithm
    arena = required_arena_bytes(sizes, a.batch_size, momentum=bool(a.momentum), merges=False)
    plan_of = {p.group: p for p in exp.memory}
    for g in exp.fleet.groups:
        if g.name in wasm:
            wasm_group_config(g, plan_of[g.name].ram_available, arena, Path("."))
