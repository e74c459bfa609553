"""The summary of a hierarchical emulation: the simulator's figures plus the emulation's own
(processes, memory, aggregator failures, frames rejected, firmware).

A concern of :class:`tinytwin.emulate.hier_coordinator.HierEmulation`; the state it reads and
writes is typed once, in :class:`tinytwin.emulate.hier_state.HierState`."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from tinytwin.emulate.hier_state import HierState
from tinytwin.emulate.run_stats import firmware_summary, kb_stats, run_stats
from tinytwin.engines.hierarchical import HState


class HierSummary(HierState):
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
            "startup_s": self.startup_s,
            **run_stats(walls, [self.mem_max[x] for x in devs if x in self.mem_max]),
            "aggregator_rss_kb": stats(las, "Rss"),
            "aggregator_pss_kb": stats(las, "Pss"),
            "coordinator_kb": self.mem_max.get("coordinator", {}),
            "forkserver_kb": self.mem_max.get("forkserver", {}),
            "all_processes_kb": dict(self.total_mem_kb),
            "process_starts": {
                "devices": int(self.spawned.sum()) + self.restarts["device"],
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
            "coordinator_cpu_s": self.coordinator_cpu_s,
            "devices_cpu_s": self.devices_cpu_s,
            "memory_sampling_s": self.sampling_s,
            **({"orchestration": self._orchestration_figures()} if self.orchestrated else {}),
            **({"firmware": firmware_summary(self.firmware, self.qemu_mem, self.fw_rounds)} if self.firmware else {}),
        }
        return s

    def _orchestration_figures(self) -> dict[str, Any]:
        """Reaction times, the orchestrator's CPU time, the GA's CPU share and memory."""

        def ms(kind: str, key: str) -> dict[str, Any]:
            xs = [x[key] * 1e3 for x in self.reactions if x["kind"] == kind and key in x]
            if not xs:
                return {"n": 0}
            return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs)}

        wall = self._wall()
        return {
            "join_detect_ms": ms("join", "detect_s"),
            "join_reconfigured_ms": ms("join", "reconfigured_s"),
            "leave_detect_ms": ms("leave", "detect_s"),
            "leave_reconfigured_ms": ms("leave", "reconfigured_s"),
            "orchestrator_cpu_s": self.orchestrator_cpu_s,
            "coordinator_cores": (self.coordinator_cpu_s or 0.0) / wall if wall > 0 else None,
            "coordinator_rss_kb": self.mem_max.get("coordinator", {}).get("Rss"),
            "reactions": [{k: v for k, v in x.items() if k != "t0"} for x in self.reactions],
        }
