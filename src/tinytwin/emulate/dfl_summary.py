"""The summary of a decentralized emulation: the simulator's common figures plus the
emulation's own (processes, memory, CPU, messages, frames rejected, firmware).

A mixin of :class:`tinytwin.emulate.dfl_coordinator.DflEmulation` (its state lives there)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from tinytwin.emulate.run_stats import firmware_summary, run_stats
from tinytwin.engines.summary import common_summary


class DflSummary:
    """Methods of :class:`~tinytwin.emulate.dfl_coordinator.DflEmulation`: The summary of a decentralized emulation: the simulator's common figures plus the"""

    def summary(self, st: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
        exp, spec, a = self.exp, self.exp.spec, self.a
        m = st["last_metrics"]
        devices = [v for k, v in self.mem_max.items() if isinstance(k, int)]
        walls = st["round_walls"]
        rejected = Counter(self.coord.rejected)
        for counts in st["device_rejected"].values():
            rejected.update(counts)
        lr_part = f", lr {a.lr_schedule.name}" if a.lr_schedule.name != "none" else ""
        return {
            **common_summary(
                st["accuracies"],
                st["round"],
                float(st.get("sim_time_s", 0.0)),
                st["bytes_up"],
                st["bytes_down"],
                self.energy,
                self.plans,
                wall_time_s,
            ),
            "num_devices": self.n,
            "algorithm": f"{a.name} (sync{lr_part})",
            "dataset": spec.dataset.name,
            "model": f"{exp.model.name} ({exp.model.num_params:,} parameters)",
            "final_accuracy_across_devices": {k: m.get(f"acc_{k}") for k in ("mean", "min", "max", "std")},
            "final_consensus_distance": m.get("consensus_distance"),
            "messages": st["messages"],
            "topology": self.net.describe(),
            "message_payload_bytes": self.payload_bytes,
            "emulate": {
                "time_scale": self.opt.time_scale,
                "modelled_time_s": float(st.get("sim_time_s", 0.0)),
                "elapsed_wall_s": self.wall_offset + wall_time_s,
                "startup_s": getattr(self, "startup_s", None),
                **run_stats(walls, devices),
                "process_starts": len(self.procs.pids),
                "control_bytes": self.control_bytes,
                "frames_rejected": dict(rejected),
                "devices_with_torch": len(self.torch_devices),
                "coordinator_cpu_s": st.get("coordinator_cpu_s"),
                "devices_cpu_s": self.devices_cpu_s,
                "memory_sampling_s": self.sampling_s,
                "coordinator_kb": self.mem_max.get("coordinator", {}),
                "forkserver_kb": self.mem_max.get("forkserver", {}),
                "all_processes_kb": dict(self.total_mem_kb),
                "messages_planned": st["planned_messages"],
                "peer_down_sent": self.peer_down_sent,
                "merge_timeouts": self.merge_timeouts,
                "devices_lost": {str(d): how for d, how in sorted(self.dead.items())},
                "reconnects": self.reconnects,
                **({"gist_merges": self.gist_merges} if a.name == "gist" else {}),
                **({"firmware": self._firmware_summary()} if self.firmware else {}),
            },
        }

    def _firmware_summary(self) -> dict[str, Any]:
        """The centralized twin's firmware summary plus the merges' instruction counts."""
        return {
            **firmware_summary(self.firmware, self.qemu_mem, self.fw_rounds),
            "merge_insns_per_round_median": float(np.median(self.fw_merge_insns)) if self.fw_merge_insns else None,
        }
