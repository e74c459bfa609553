"""The part of a run's summary every engine reports the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tinytwin.fleet.memory import MemoryPlan


def common_summary(
    accuracies: Sequence[tuple[int, float]],
    rounds: int,
    sim_time_s: float,
    bytes_up: int,
    bytes_down: int,
    energy_j: np.ndarray,
    plans: Sequence[MemoryPlan],
    wall_time_s: float,
) -> dict[str, Any]:
    """Accuracy, time, bytes, energy per device and the memory verdict of a finished run."""
    accs = [a for _, a in accuracies]
    return {
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "rounds": rounds,
        "sim_time_s": sim_time_s,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "energy_j_per_device": {
            "min": float(energy_j.min()),
            "median": float(np.median(energy_j)),
            "max": float(energy_j.max()),
        },
        "energy_j_total": float(energy_j.sum()),
        "memory_fits": all(p.fits for p in plans),
        "memory": [p.as_dict() for p in plans],
        "wall_time_s": wall_time_s,
    }


def precision_summary(precision: str) -> dict[str, str]:
    """``engine.precision`` for the summary when it is not float32: results trained in a lower
    precision are not the float32 results, and whoever reads them must be told."""
    if precision == "float32":
        return {}
    return {"precision": f"{precision} (local training's weights and batches)"}
