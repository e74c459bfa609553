"""The summary of a hierarchical emulation: the simulator's figures plus the emulation's own
(processes, memory, aggregator failures, frames rejected, firmware).

A mixin of :class:`tinytwin.emulate.hier_coordinator.HierEmulation` (its state lives there)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tinytwin.emulate.run_stats import firmware_summary, kb_stats, run_stats
from tinytwin.engines.hierarchical import HState


class HierSummary:
    """Methods of :class:`~tinytwin.emulate.hier_coordinator.HierEmulation`: The summary of a hierarchical emulation: the simulator's figures plus the emulation's own"""

    def summary(self, st: HState, wall_time_s: float) -> dict[str, Any]:
        def stats(names: list[str], key: str) -> dict[str, Any]:
            return kb_stats([self.mem_max[x].get(key, 0) for x in names if x in self.mem_max])

        devs = [f"d{d}" for d in range(self.n)]
        las = [f"la{c}" for c in range(self.k)]
        walls = self.round_walls
        rejected = Counter(self.coord.rejected) + self.rejected_retired
        for counts in list(self.la_rejected.values()) + list(self.device_rejected.values()):
            rejected.update(counts)
        s = self.sim.summary(st, wall_time_s)
        s["emulate"] = {
            "time_scale": self.opt.time_scale,
            "modelled_time_s": self.modelled_s,
            "elapsed_wall_s": self._wall(),
            "shaping": {"mode": "userspace", "rate": "userspace", "latency_loss": "userspace"},
            "startup_s": getattr(self, "startup_s", None),
            **run_stats(walls, [self.mem_max[x] for x in devs if x in self.mem_max]),
            "aggregator_rss_kb": stats(las, "Rss"),
            "aggregator_pss_kb": stats(las, "Pss"),
            "coordinator_kb": self.mem_max.get("coordinator", {}),
            "forkserver_kb": self.mem_max.get("forkserver", {}),
            "all_processes_kb": dict(self.total_mem_kb),
            "process_starts": {
                "devices": self.n + self.restarts["device"],
                "aggregators": self.k + self.restarts["aggregator"],
            },
            "control_bytes": self.control_bytes,
            "la_ga_bytes": self.la_ga_bytes,
            "frames_rejected": dict(rejected),
            "devices_with_torch": len(self.device_torch),
            "aggregators_with_torch": len(self.la_torch),
            "processes_with_torch_mapped": sorted(self.torch_mapped),
            "cluster_failures": [{"round": r, "cluster": c, "why": why} for r, c, why in self.cluster_failures],
            "reconnects": self.reconnects,
            "coordinator_cpu_s": getattr(self, "coordinator_cpu_s", None),
            "devices_cpu_s": self.devices_cpu_s,
            "memory_sampling_s": self.sampling_s,
            **({"firmware": firmware_summary(self.firmware, self.qemu_mem, self.fw_rounds)} if self.firmware else {}),
        }
        return s
