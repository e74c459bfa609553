"""The figures an emulation's summary reports about its processes: memory per process kind,
wall time per round, and firmware devices' images, QEMU memory and instruction counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def kb_stats(vals: list[int]) -> dict[str, Any]:
    """Median, max and total of per-process memory figures (kB)."""
    return {"median": float(np.median(vals)) if vals else None, "max": max(vals, default=None), "total": int(sum(vals))}


def run_stats(walls: list[float], devices: list[dict[str, int]]) -> dict[str, Any]:
    """The summary's wall time per round and the device processes' largest RSS / PSS."""
    return {
        "wall_per_round_s": {
            "median": float(np.median(walls)) if walls else None,
            "max": float(max(walls)) if walls else None,
        },
        "device_rss_kb": kb_stats([m.get("Rss", 0) for m in devices]),
        "device_pss_kb": kb_stats([m.get("Pss", 0) for m in devices]),
    }


def firmware_summary(
    firmware: dict[int, dict[str, Any]], qemu_mem: dict[int, dict[str, int]], fw_rounds: list[tuple[int, float, float]]
) -> dict[str, Any]:
    """Firmware devices: boards, image sizes, QEMU memory, instruction counts vs the cost model."""
    images = {(c["firmware"]["board"], c["firmware"]["image"]["elf"]): c["firmware"] for c in firmware.values()}
    rss = [m["qemu_rss_kb"] for m in qemu_mem.values()]
    pss = [m["qemu_pss_kb"] for m in qemu_mem.values() if "qemu_pss_kb" in m]
    fw = np.array(fw_rounds, dtype=float).reshape(-1, 3)
    return {
        "devices": len(firmware),
        "images": [
            {
                "board": f["board"],
                "cpi": f["cpi"],
                "text": f["image"]["text"],
                "bss": f["image"]["bss"],
                "ram_budget": f["image"]["ram_bytes"],
                "arena": f["image"]["arena_bytes"],
            }
            for f in images.values()
        ],
        "qemu_rss_kb": {"median": float(np.median(rss)) if rss else None, "total": int(sum(rss))},
        "qemu_pss_kb": {"median": float(np.median(pss)) if pss else None, "total": int(sum(pss))},
        "insns_per_round_median": float(np.median(fw[:, 0])) if len(fw) else None,
        "firmware_compute_s_median": float(np.median(fw[:, 1])) if len(fw) else None,
        "cost_model_compute_s_median": float(np.median(fw[:, 2])) if len(fw) else None,
    }


def emulation_figures(emu: Any, state: Any) -> dict[str, Any]:
    """The ``emulate`` part of a centralized emulation's summary: time scale and clocks, how
    links were shaped, processes, connections, rejected frames and firmware figures."""
    return {
        "time_scale": emu.opt.time_scale,
        "modelled_time_s": state.sim_time_s,
        "elapsed_wall_s": state.wall_s,
        "shaping": emu.shaping(),
        "startup_s": getattr(emu, "startup_s", None),
        **run_stats(state.round_walls, list(emu.mem_max.values())),
        "process_starts": int(sum(emu.spawns.values())),
        "reconnects": emu.reconnects,
        "control_bytes": emu.control_bytes,
        "frames_rejected": dict(emu.coord.rejected),
        "devices_with_torch": len(emu.torch_devices),
        **({"firmware": firmware_summary(emu.firmware, emu.qemu_mem, emu.fw_rounds)} if emu.firmware else {}),
    }
