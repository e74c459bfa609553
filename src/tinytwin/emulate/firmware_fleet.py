"""Coordinator side of firmware devices: build one image per group and say how to run it.

A fleet group with ``twin: firmware`` (or every group under ``tinytwin emulate --twin
firmware``) runs the project's C client on an emulated Cortex-M board instead of numpy.
Here, before any process starts, each such group gets its firmware image: the board and
CPI from :mod:`tinytwin.firmware.profiles`, the RAM budget = the RAM the memory plan says
is available for training on that profile, the arena = what the client needs for the
spec's MLP (:func:`tinytwin.firmware.build.required_arena_bytes`). A model that does not
fit is refused here, at build time, with the overflow in bytes — the same moment the
simulator's memory planner refuses it.

Each device then gets a ``firmware`` block in its config (image, work folder for the
semihosting files, layer sizes, CPI and clock) that
:class:`tinytwin.emulate.trainers.FirmwareTrainer` reads in the device process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinytwin.emulate.wasm_fleet import check_wasm_groups, in_group, wasm_group_config
from tinytwin.engines.experiment import Experiment
from tinytwin.errors import TinyTwinError


def firmware_groups(exp: Experiment, all_firmware: bool = False) -> set[str]:
    """Names of the groups whose devices run the C client: on QEMU (``twin: firmware``) or
    under Wasmtime (``twin: wasm``, :mod:`tinytwin.emulate.wasm_fleet`)."""
    spec_groups = exp.spec.fleet.groups
    return {g.name for g, s in zip(exp.fleet.groups, spec_groups) if all_firmware or s.twin in ("firmware", "wasm")}


def check_firmware_spec(exp: Experiment) -> None:
    other = sorted({l.kind for l in exp.model.layers} - {"flatten", "linear", "relu"})
    if other:
        raise TinyTwinError(
            f"firmware devices train MLPs only; model {exp.model.name} has {', '.join(other)} "
            "layers (run its groups with twin: process)"
        )
    a = exp.spec.algorithm
    if a.optimizer != "sgd" or a.prox_mu:
        raise TinyTwinError(
            f"firmware devices train with SGD (momentum, weight decay) only; algorithm uses "
            f"optimizer={a.optimizer} prox_mu={a.prox_mu}"
        )
    if any(s.twin == "wasm" for s in exp.spec.fleet.groups):
        from tinytwin.emulate.model_rows import mlp_rows

        check_wasm_groups(exp, mlp_shape(mlp_rows(exp))[0])


def mlp_shape(linears_rows: list[list[Any]]) -> tuple[list[int], list[bool]]:
    """Layer widths and ReLU flags of the MLP from the coordinator's linear-layer rows."""
    sizes = [int(linears_rows[0][2])] + [int(row[3]) for row in linears_rows]
    return sizes, [bool(row[4]) for row in linears_rows]


def firmware_configs(
    exp: Experiment,
    linears_rows: list[list[Any]],
    workroot: Path,
    groups: set[str],
    merges: bool = False,
    timeout_s: float = 120.0,
    arena_override: dict[int, int] | None = None,
) -> dict[int, dict[str, Any]]:
    """Per device of a firmware group: the ``twin``/``firmware`` entries of its config."""
    from tinytwin.firmware.build import build_firmware, image_dict, required_arena_bytes
    from tinytwin.firmware.profiles import target_for

    if not groups:
        return {}
    check_firmware_spec(exp)
    a = exp.spec.algorithm
    plan_of = {p.group: p for p in exp.memory}
    out: dict[int, dict[str, Any]] = {}
    transport = {g.name: s.firmware_transport for g, s in zip(exp.fleet.groups, exp.spec.fleet.groups)}
    runtime = {g.name: s.twin for g, s in zip(exp.fleet.groups, exp.spec.fleet.groups)}
    for g in exp.fleet.groups:
        if g.name not in groups:
            continue
        sizes, relu = mlp_shape(group_rows(exp, g, linears_rows))  # its own sub-model's layout
        arena = required_arena_bytes(sizes, a.batch_size, momentum=bool(a.momentum), merges=merges)
        if runtime[g.name] == "wasm":
            own_wasm = wasm_group_config(g, plan_of[g.name].ram_available, arena, workroot)
            for d in g.devices:
                out[int(d)] = {
                    "twin": "firmware",
                    "firmware": {
                        **own_wasm,
                        **_device_fields(exp, g, d, sizes, relu, workroot, timeout_s, transport[g.name]),
                    },
                }
            continue
        target = target_for(g.profile.name)
        try:
            image = build_firmware(target.board, plan_of[g.name].ram_available, arena)
        except TinyTwinError as exc:
            raise in_group(exc, g) from None
        for d in g.devices:
            d = int(d)
            own = image
            if arena_override and d in arena_override:
                own = build_firmware(target.board, plan_of[g.name].ram_available, arena_override[d])
            out[d] = {
                "twin": "firmware",
                "firmware": {
                    "image": image_dict(own),
                    "board": target.board,
                    "cpi": target.cpi,
                    **_device_fields(exp, g, d, sizes, relu, workroot, timeout_s, transport[g.name]),
                },
            }
    return out


def group_rows(exp: Experiment, g: Any, linears_rows: list[list[Any]]) -> list[list[Any]]:
    """The MLP rows a group's devices train: the model's, or their nested sub-model's (issue #11)."""
    if not exp.models.heterogeneous:
        return linears_rows
    from tinytwin.emulate.model_rows import rows_of_model

    return rows_of_model(exp.models.of(int(g.devices[0])).model)


def _device_fields(
    exp: Experiment,
    g: Any,
    d: int,
    sizes: list[int],
    relu: list[bool],
    workroot: Path,
    timeout_s: float,
    transport: str,
) -> dict[str, Any]:
    """The fields of a device's ``firmware`` config that do not depend on its runtime."""
    return {
        "clock_hz": float(g.profile.clock_hz),
        "sizes": sizes,
        "relu": relu,
        "workdir": str(workroot / f"d{int(d)}"),
        "timeout_s": timeout_s,
        "transport": transport,
    }
