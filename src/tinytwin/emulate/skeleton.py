"""The part of a coordinator every emulated family shares: its two clocks and how it stamps
events.

The wall clock runs over every coordinator incarnation of a run (a killed coordinator's
downtime excluded: ``wall_offset`` is where its predecessor's committed rounds ended); the
modelled clock is the cost model's, the one the simulator keeps, and stamps every event, so
the twins' events and rounds share one time axis (#17)."""

from __future__ import annotations

import time
from typing import Any


class CoordinatorClock:
    """Mixin of the three coordinators: ``_wall()`` and ``_event()``."""

    t_start: float = 0.0
    wall_offset: float = 0.0
    modelled_s: float = 0.0
    """The cost model's clock at the start of the round in flight."""

    def _start_clock(self, wall_offset: float = 0.0, modelled_s: float = 0.0) -> None:
        self.t_start, self.wall_offset, self.modelled_s = time.perf_counter(), wall_offset, modelled_s

    def _wall(self) -> float:
        """Wall seconds of the run so far, over every coordinator incarnation."""
        return self.wall_offset + time.perf_counter() - self.t_start

    def _event(self, r: int, d: int | None, kind: str, detail: str) -> dict[str, Any]:
        """An ``events`` row of round ``r``, at the modelled time the round started."""
        return {"round": r, "sim_time_s": self.modelled_s, "device": d, "kind": kind, "detail": detail}


def firmware_metrics(
    metrics: dict[int, dict[str, Any]], qemu_mem: dict[int, dict[str, int]], fw_rounds: list[tuple[int, float, float]]
) -> None:
    """Firmware devices' METRICS into the run's figures: each QEMU's largest memory, and each
    device-round's (instructions, firmware seconds, cost-model seconds)."""
    for d, m in metrics.items():
        if "qemu_rss_kb" in m:
            cur = qemu_mem.setdefault(d, {})
            for k in ("qemu_rss_kb", "qemu_pss_kb"):
                cur[k] = max(cur.get(k, 0), int(m.get(k, 0)))
        if "insns" in m:
            fw_rounds.append((int(m["insns"]), float(m["firmware_compute_s"]), float(m["cost_model_compute_s"])))
