"""The adaptive orchestrator in a hierarchical emulation: joins and leaves are real processes.

The spec's timeline is the scenario, enacted on processes: a device that leaves at round r is
SIGKILLed as round r is about to start, and a device that joins is a new process, started then,
whose configuration names the global coordinator (GA) instead of a local aggregator (LA). The
orchestrator hears of both over the wire, as it would of real nodes: the joiner's HELLO reaches
the GA (a registration), and the LA whose member's connection broke reports it with a BYE. Only
then does the GA reconfigure — with the simulator's orchestrator
(:class:`tinytwin.engines.orchestrator.Orchestrator`, on the engine object's state), so the same
events give the same configurations and costs — and carry the new configuration out: a
registered joiner is told its LA's port, a moved device is handed over by its old LA (both with
``CONTROL {"cmd": "redirect"}``), and each LA learns its new members from the round's plan.

Measured for the summary (seed 004 §2, Table 2): how long after the process action the GA heard
of it (``detect_s``), how long until the new configuration was sent out (``reconfigured_s``),
the orchestrator's own CPU time, and the GA's CPU share and memory.

A concern of :class:`tinytwin.emulate.hier_coordinator.HierEmulation`; the state it reads and
writes is typed once, in :class:`tinytwin.emulate.hier_state.HierState`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np

from tinytwin.emulate.aggregator import aggregator_id
from tinytwin.emulate.hier_files import HierFiles
from tinytwin.emulate.serving import send_frame
from tinytwin.engines.hierarchical import HState
from tinytwin.wire import frame as fm

DETECTED = {"join": "join_detected", "leave": "leave_detected"}


class HierOrchestration(HierFiles):
    """Methods of :class:`~tinytwin.emulate.hier_coordinator.HierEmulation` that run the
    orchestrator on real process events (see the module's docstring)."""

    # ---- what the GA hears ------------------------------------------------------------------
    def _heard(self, kind: str, d: int) -> asyncio.Event:
        return self.heard.setdefault((kind, d), asyncio.Event())

    def _note_heard(self, kind: str, d: int) -> None:
        """A join (the device's HELLO at the GA) or a leave (its LA's BYE) reached the GA."""
        self.heard_at[(kind, d)] = time.perf_counter()
        self._heard(kind, d).set()

    # ---- the scenario, enacted ------------------------------------------------------------------
    async def _enact(self, r: int, changes: list[tuple[int, str]], events: list[dict[str, Any]]) -> None:
        """Kill the round's leavers and start its joiners; wait until the GA has heard of each."""
        started: dict[tuple[str, int], float] = {}
        for d, kind in changes:
            if kind not in DETECTED:
                continue
            self.heard.pop((kind, d), None)
            self.heard_at.pop((kind, d), None)
            self._heard(kind, d)
            if kind == "leave" and self.procs.alive(d):
                started[(kind, d)] = time.perf_counter()
                self.procs.kill(d)
                self.placed[d] = -1
            elif kind == "join" and not self.procs.alive(d):
                await self.procs.wait_exit(d)
                self.placed[d] = -1
                self._device_config(d)  # outside the configuration: it calls the GA
                started[(kind, d)] = time.perf_counter()
                await self._spawn_device(d)
                self.restarts["device"] += int(self.spawned[d])
                self.spawned[d] = True
        for (kind, d), t0 in started.items():
            try:
                await asyncio.wait_for(self._heard(kind, d).wait(), self.opt.start_timeout_s)
            except TimeoutError:
                events.append(self._event(r, d, f"{kind}_not_detected", f"device {d}: not heard of in time"))
                continue
            detect = self.heard_at[(kind, d)] - t0
            self.reactions.append({"round": r, "device": d, "kind": kind, "detect_s": detect, "t0": t0})
            how = "its HELLO reached the GA" if kind == "join" else "its LA reported the lost connection"
            events.append(self._event(r, d, DETECTED[kind], f"device {d}: {how} {detect * 1e3:.0f} ms after"))
        await asyncio.gather(*(self.procs.wait_exit(d) for kind, d in started if kind == "leave"))

    # ---- decisions and their execution ----------------------------------------------------------
    async def _orchestrate(
        self, r: int, st: HState, changes: list[tuple[int, str]], online: np.ndarray, events: list[dict[str, Any]]
    ) -> float:
        """Before round r: enact the timeline, reconfigure as the simulator does, move the devices;
        the change cost."""
        if changes:
            await self._enact(r, changes, events)
        cpu0 = time.process_time()
        cost = self.sim._reconfigure(st, r, bool(changes), online, events)
        self.orchestrator_cpu_s += time.process_time() - cpu0
        await self._place(r)
        return cost

    async def _place(self, r: int) -> None:
        """Send every running device whose parent changed (a reconfiguration or a revert) to its LA."""
        assign, wr = self.sim.assign, r + self.offset
        moves: dict[int, dict[str, int]] = {}
        for d in map(int, np.flatnonzero((assign >= 0) & (assign != self.placed))):
            port = self.la_port[int(assign[d])]
            self._device_config(d)  # a restart of it goes to its new parent
            if d in self.registered:  # a joiner waiting at the GA
                msg = json.dumps({"cmd": "redirect", "port": port}).encode()
                await send_frame(self.registered[d], self.coord.make(fm.MsgType.CONTROL, d, wr, "none", msg))
            elif self.placed[d] >= 0 and self.procs.alive(d):
                moves.setdefault(int(self.placed[d]), {})[str(d)] = port
            self.placed[d] = assign[d]
        for c, moved in sorted(moves.items()):
            msg = json.dumps({"cmd": "redirect", "devices": moved}).encode()
            await self._send_la(c, self.coord.make(fm.MsgType.CONTROL, aggregator_id(c), wr, "none", msg))
        self.members = {c: [int(d) for d in np.flatnonzero(self.placed == c)] for c in range(self.k)}
        now = time.perf_counter()
        for x in self.reactions:
            x.setdefault("reconfigured_s", now - x["t0"])

    async def _send_la(self, c: int, data: bytes) -> bool:
        return await send_frame(self.la_writers.get(c), data)
