"""A decentralized emulation's checkpoint and its resume: what the coordinator holds after a
committed round, and how a resumed coordinator adopts the device processes that outlived
its predecessor (they hold the models) and rolls them back to that round.

A mixin of :class:`tinytwin.emulate.dfl_coordinator.DflEmulation` (its state lives there)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tinytwin.emulate.fork_fleet import PEERS_FILE, WIRE_STRIDE
from tinytwin.emulate.processes import adopt_recorded


class DflResume:
    """Methods of :class:`~tinytwin.emulate.dfl_coordinator.DflEmulation`: A decentralized emulation's checkpoint and its resume: what the coordinator holds after a"""

    def _checkpoint(self, st: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        """What the coordinator holds after a committed round (the devices hold their models):
        the run's totals, the per-device schedule, energy and local rounds, who is gone (and the
        last model of those: the others report theirs in the last round)."""
        return {
            "st": st,
            "wall": self._wall(),
            "offset": self.offset,
            "dead": dict(self.dead),
            "killed": set(self.killed),
            "local_rounds": self.local_rounds,
            "energy": self.energy,
            "lr_sched": dict(vars(self.lr_sched)),
            "models": {d: w for d, w in self.models.items() if d in self.dead},
            "counters": {
                k: getattr(self, k)
                for k in (
                    "control_bytes",
                    "peer_down_sent",
                    "merge_timeouts",
                    "gist_merges",
                    "fw_rounds",
                    "fw_merge_insns",
                    "qemu_mem",
                    "torch_devices",
                    "reconnects",
                )
            },
        }

    def restore(self, ck: dict[str, Any]) -> dict[str, Any]:
        """The coordinator's state after the checkpoint's round; returns the run's totals (``st``)."""
        self.wall_offset = float(ck["wall"])
        self.offset = int(ck["offset"]) + WIRE_STRIDE
        self.dead, self.killed = dict(ck["dead"]), set(ck["killed"])
        self.local_rounds, self.energy = np.array(ck["local_rounds"]), np.array(ck["energy"])
        self.lr_sched.__dict__.update(ck["lr_sched"])
        self.models = dict(ck["models"])
        for k, v in ck["counters"].items():
            setattr(self, k, v)
        return ck["st"]

    async def _resume_devices(self, st: dict[str, Any]) -> None:
        """Adopt the device processes of the killed coordinator, wait until they call again
        (each finishes the round it was in first), tell them to continue after round R (a device
        that played round R + 1 rolls back to its state after R), and record who did not return."""
        R = int(st["round"])
        events: list[dict[str, Any]] = []
        adopt_recorded(self.procs.adopt, self.edir / PEERS_FILE, skip=self.dead)
        adopted = sorted(self.procs.adopted)
        wait = self.opt.start_timeout_s + self.opt.merge_timeout_s

        async def hello(d: int) -> None:
            try:
                await asyncio.wait_for(self.hello[d].wait(), wait)
            except TimeoutError:
                pass

        await asyncio.gather(*(hello(d) for d in adopted))
        back = [d for d in adopted if d in self.writers]
        self.coord.round, self.coord.expect, self.coord.metrics = R + self.offset, set(back), {}
        self.resume_done = asyncio.Event()
        if not back:
            self.resume_done.set()
        await asyncio.gather(
            *(self._send_control(d, R, {"cmd": "resume", "round": R, "wire": R + self.offset}) for d in back)
        )
        try:
            await asyncio.wait_for(self.resume_done.wait(), self.opt.start_timeout_s)
        except TimeoutError:
            pass
        failing_next = {d for d, kind in self.exp.timeline.changes(R + 1) if kind == "failure"}
        ok = [d for d in back if self.resumed.get(d, {}).get("ok")]
        gone = 0
        for d in range(self.n):
            if d in self.dead or d in ok:
                continue
            self.procs.kill(d)
            gone += 1
            if d in failing_next:  # killed in the abandoned attempt of round R + 1: it is again
                self.absent.add(d)
                continue
            why = (
                "did not call the coordinator again"
                if d not in back
                else "could not roll back to round %d" % R
                if d in self.resumed
                else "did not confirm the resume"
            )
            self.dead[d] = "lost"
            st["dead_recorded"].add(d)
            events.append(self._event(R, d, "lost", f"device {d} {why}; out of the run"))
            await self._notify_down(d)
        events.append(
            self._event(
                R,
                None,
                "devices_resumed",
                f"{len(ok)} device processes of the killed coordinator reconnected and continue "
                f"after round {R}; {gone} did not",
            )
        )
        self.store.add_events(self.run_id, events)

    @staticmethod
    def initial_st() -> dict[str, Any]:
        return {
            "round": 0,
            "sim_time_s": 0.0,
            "bytes_up": 0,
            "bytes_down": 0,
            "messages": 0,
            "planned_messages": 0,
            "accuracies": [],
            "round_walls": [],
            "last_metrics": {},
            "dead_recorded": set(),
            "device_rejected": {},
        }
