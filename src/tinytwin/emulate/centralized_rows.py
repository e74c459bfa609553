"""What one centralized emulated round records: the per-device rows (status, the cost model's
figures with the failures that really happened, the bytes that really crossed the sockets),
the measured wall-clock times of each selected device, and the round's row.

Pure functions of what the round gathered, so the coordinator's round stays a readable
sequence of steps (:mod:`tinytwin.emulate.centralized`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinytwin.engines.round_costs import RoundCosts


@dataclass(frozen=True)
class Sent:
    """The coordinator's side of one device's round start."""

    bytes: int = 0
    wall_s: float = 0.0
    mono0: float = 0.0
    shaped_s: float = 0.0


@dataclass
class Gathered:
    """What the round's serving gathered: updates, their bytes, the devices' METRICS, when each
    update was complete (``time.monotonic()``) and why the others failed."""

    updates: dict[int, np.ndarray]
    update_bytes: dict[int, int]
    metrics: dict[int, dict[str, Any]]
    update_at: dict[int, float]
    failed: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Draw:
    """Who takes part in the round, drawn exactly as the simulator draws it."""

    online_ids: np.ndarray
    reachable: np.ndarray
    selected: np.ndarray
    victim: np.ndarray
    plan: RoundCosts


def device_status(d: int, i: int | None, draw: Draw, got: Gathered) -> str:
    """A device's status in the round: idle / link_down (not selected), ok, dropped (killed by
    the twin), the cost model's verdict (straggler, link down) or how its process failed."""
    if i is None:
        return "idle" if draw.reachable[d] else "link_down"
    if d in got.updates:
        return "ok"
    if bool(draw.victim[i]):
        return "dropped"
    if not draw.plan.completed[i]:
        return str(draw.plan.statuses[i])
    return got.failed.get(d, "failed").split(" ")[0]


def device_rows(
    r: int, num_samples: np.ndarray, draw: Draw, final: RoundCosts, got: Gathered, sends: list[Sent]
) -> tuple[list[dict[str, Any]], list[float]]:
    """The ``device_rounds`` rows of every online device, and the train losses reported."""
    pos = {int(d): i for i, d in enumerate(draw.selected)}
    rows, losses = [], []
    for d in map(int, draw.online_ids):
        i = pos.get(d)
        m = got.metrics.get(d, {}) if d in got.updates else {}
        if m.get("train_loss") is not None:
            losses.append(m["train_loss"])
        cost = lambda a: float(a[i]) if i is not None else 0.0  # noqa: E731
        rows.append(
            {
                "round": r,
                "device": d,
                "status": device_status(d, i, draw, got),
                "num_samples": int(num_samples[d]),
                "compute_s": cost(final.cpu_s),
                "up_s": cost(final.up_s),
                "down_s": cost(final.down_s),
                "bytes_up": int(got.update_bytes.get(d, 0)),
                "bytes_down": int(sends[i].bytes) if i is not None else 0,
                "packets_lost": int(final.down.lost_packets[i] + final.up.lost_packets[i]) if i is not None else 0,
                "energy_j": float(final.energy_j[d]),
                "train_loss": m.get("train_loss"),
                "accuracy": None,
            }
        )
    return rows, losses


def measured_row(
    r: int, d: int, sent: Sent, m: dict[str, Any], got_at: float | None, round_mono: float
) -> dict[str, Any]:
    """Wall-clock times of one device's round (None where the device never got that far)."""
    model_at, up_at = m.get("model_at"), m.get("up_at")
    return {
        "round": r,
        "device": d,
        "wall_down_s": model_at - sent.mono0 if model_at is not None and sent.bytes else None,
        "wall_compute_s": up_at - model_at if up_at is not None and model_at is not None else None,
        "wall_train_s": m.get("busy_s"),
        "wall_up_s": got_at - up_at if got_at is not None and up_at is not None else None,
        "wall_total_s": got_at - round_mono if got_at is not None else None,
        "shaped_down_s": sent.shaped_s,
        "shaped_up_s": m.get("up_wait_s"),
        "rss_kb": m.get("rss_kb"),
        "insns": m.get("insns"),
        "firmware_compute_s": m.get("firmware_compute_s"),
        "qemu_rss_kb": m.get("qemu_rss_kb"),
    }


def measured_rows(r: int, draw: Draw, got: Gathered, sends: list[Sent], round_mono: float) -> list[dict[str, Any]]:
    """:func:`measured_row` of every selected device."""
    out = []
    for i, d in enumerate(map(int, draw.selected)):
        m = got.metrics.get(d, {}) if d in got.updates else {}
        out.append(measured_row(r, d, sends[i], m, got.update_at.get(d), round_mono))
    return out
