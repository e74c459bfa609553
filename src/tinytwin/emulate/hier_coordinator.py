"""The global coordinator of a hierarchical emulation: local aggregator processes, device processes.

``tinytwin emulate`` on a spec with ``algorithm.name: hierarchical`` runs here (routed by
:func:`tinytwin.emulate.coordinator.check_emulatable` / ``start_emulation``). Processes:

- the **global coordinator** (GA, this process): prepares the experiment exactly like
  ``tinytwin run`` and builds the simulator's engine object
  (:class:`tinytwin.engines.hierarchical.HierarchicalSimulator`) for its definitions —
  cluster assignment (given / balanced / minCommCost), sample counts, compute times,
  ``aggregator_link``, the server optimizer, the cost ledger — then serves the local
  aggregators on an ephemeral TCP port and drives the global rounds;
- one **local aggregator** per cluster (:mod:`tinytwin.emulate.aggregator`, numpy only);
- one **device** per device (:mod:`tinytwin.emulate.device`, the centralized twin's runtime,
  unchanged), configured with its local aggregator's address.

Every process is forked by the emulation's fork server (:mod:`tinytwin.emulate.forkserver`
with the :mod:`tinytwin.emulate.hier_procs` entry). Per global round r the GA computes the
round's link figures with the engine's draws (:mod:`tinytwin.emulate.hier_plan`), sends
every cluster with an online device its plan and the global model (MODEL, after the
aggregator link's shaped delay), receives each local aggregator's per-local-round reports
and its cluster update, and aggregates them as the engine does (sample-weighted mean of
the decoded cluster updates, the server optimizer, the downlink encoding), evaluates with
the engine's functions and writes the engine's tables (``rounds``, ``device_rounds``,
``events``, ``round_metrics``, ``device_metrics``, ``ledger``) with ``twin = 'emulate'``.

Faults: devices are SIGKILLed during the first local round of a round (by their local
aggregator, right after it sent them the model plus a random fraction of their paced
compute time) for ``failures.permanent`` / ``permanent_probability`` (not restarted) and
:attr:`HierOptions.kill_devices` (restarted at the next round); a local aggregator in
:attr:`HierOptions.kill_aggregators` is SIGKILLed as soon as it has reported its first
local round: its cluster is recorded as failed for that round (``la_failed``), the round
completes with the other clusters, and the aggregator is started again (same port; its
devices reconnect) at the next round. A killed GA resumes (:func:`resume_hier_emulation`):
every committed round checkpoints its state, it binds the same address
(``emulate/coordinator.json``), adopts the LAs and devices still running
(``emulate/peers.json``) and replays the rounds after the last committed one with a wire-round
offset. See docs/emulation.md, "Hierarchical runs".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import time
from collections import Counter
from typing import Any

import numpy as np

from tinytwin.algorithms.aggregators_np import NP_RULES
from tinytwin.emulate.aggregator import AGGREGATOR_BASE, aggregator_id
from tinytwin.emulate.fork_fleet import maps_torch, proc_cpu_s
from tinytwin.emulate.hier_orchestration import HierOrchestration
from tinytwin.emulate.hier_plan import HierRoundPlan, lossless, plan_round
from tinytwin.emulate.hier_record import HierRecording
from tinytwin.emulate.hier_state import HierOptions as HierOptions  # re-exported: the family's options
from tinytwin.emulate.hier_state import RoundState
from tinytwin.emulate.hier_summary import HierSummary
from tinytwin.emulate.lifecycle import (
    ProgressFn,
    bind_coordinator,
)
from tinytwin.emulate.processes import child_env, note_memory
from tinytwin.emulate.serving import accepted_frames
from tinytwin.engines.hierarchical import HState
from tinytwin.errors import TinyTwinError
from tinytwin.fleet.cost import take_links
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm

__all__ = ["HierEmulation", "HierOptions", "check_hier_emulatable"]

log = logging.getLogger("tinytwin.emulate.hier")
MiB = 2**20


def check_hier_emulatable(spec: ExperimentSpec) -> None:
    """Refuse, in one line, what the hierarchical emulation does not run."""
    a = spec.algorithm
    f = spec.failures
    if a.hierarchical.orchestration is not None and (f.permanent or f.permanent_probability):
        raise TinyTwinError(
            "emulate: an orchestrated run enacts failures.join and failures.leave as processes; "
            "failures.permanent is simulation-only there (tinytwin run)"
        )
    if a.aggregator.name not in NP_RULES or a.aggregator.norm_bound is not None:
        raise TinyTwinError(
            f"emulate: local aggregators run fedavg, median or trimmed_mean (numpy); aggregator.name "
            f"{a.aggregator.name!r}{' with a norm_bound' if a.aggregator.norm_bound else ''} is simulation-only "
            "for hierarchical runs (tinytwin run)"
        )


class HierEmulation(HierRecording, HierOrchestration, HierSummary):
    """One hierarchical emulated run: processes, rounds, results."""

    # ---- files -------------------------------------------------------------------------
    # ---- processes ---------------------------------------------------------------------
    async def _start_la(self, c: int, first: bool) -> bool:
        """Start local aggregator c and wait for its HELLO; False if it did not say it."""
        self.la_hello[c] = asyncio.Event()
        old_port = self.la_port.get(c)
        await self.procs.spawn(self._la_key(c), self._la_config(c, first), self.edir / "logs" / f"la{c}.log")
        try:
            await asyncio.wait_for(self.la_hello[c].wait(), self.opt.start_timeout_s)
        except TimeoutError:
            return False
        if old_port is not None and self.la_port[c] != old_port:
            # its port was taken meanwhile: its devices are told the new address by a restart
            for d in self.members[c]:
                self._device_config(d)
                if self.procs.alive(d):
                    self.procs.kill(d)
                    await self.procs.wait_exit(d)
        return True

    # ---- the GA's connections ------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cluster: int | None = None
        wid: int | None = None
        try:
            async for fr, content, total in accepted_frames(
                reader, writer, self.coord, lambda: wid, reject_device=lambda: None
            ):
                if fr.msg_type == fm.MsgType.HELLO and fr.sender < AGGREGATOR_BASE:
                    wid = fr.sender  # a joining device registers (orchestrated runs: hier_orchestration)
                    self.registered[wid] = writer
                    self.control_bytes += total
                    self._note_heard("join", wid)
                elif fr.msg_type == fm.MsgType.BYE and cluster is not None:
                    self._note_heard("leave", int(content.get("device", -1)))  # a member's connection broke
                    self.control_bytes += total
                elif fr.msg_type == fm.MsgType.HELLO:
                    wid, cluster = fr.sender, fr.sender - AGGREGATOR_BASE
                    self.la_writers[cluster] = writer
                    self.la_port[cluster] = int(content.get("port", 0))
                    self.la_hello_info[cluster] = content
                    if content.get("torch_loaded"):
                        self.la_torch.add(cluster)
                    self.control_bytes += total
                    self.la_hello[cluster].set()
                elif fr.msg_type == fm.MsgType.METRICS:
                    self.control_bytes += total
                    self._metrics(cluster, content)
                elif fr.msg_type == fm.MsgType.UPDATE:
                    rs = self.rs
                    if rs is None or cluster in rs.killed:
                        continue  # a report that left just before its SIGKILL
                    self.coord.updates[fr.sender] = content
                    self.coord.update_bytes[fr.sender] = total
                    self._check_done()
        finally:
            if cluster is None and wid is not None and self.registered.get(wid) is writer:
                del self.registered[wid]  # a registered joiner went on to its LA (or died)
            if cluster is not None and self.la_writers.get(cluster) is writer:
                del self.la_writers[cluster]
                rs = self.rs
                if rs is not None and wid in self.coord.expect and not self._delivered(cluster):
                    rs.failed[cluster] = "killed" if cluster in rs.killed else "disconnected"
                    self.coord.expect.discard(wid)
                    self._check_done()
            writer.close()

    def _metrics(self, c: int | None, content: dict[str, Any]) -> None:
        if c is None:
            return
        kind = content.get("kind")
        if kind == "ready":
            self.la_ready[c].set()
            return
        rs = self.rs
        if rs is None:
            return
        if kind == "local":
            rs.local.setdefault(c, []).append(content)
            for d, m in content.get("devices", {}).items():
                if m.get("torch_loaded"):
                    self.device_torch.add(int(d))
            if c in rs.kill and c not in rs.killed and int(content.get("local", 0)) == 1:
                rs.killed.add(c)  # SIGKILL once it has reported its first local round
                self.procs.kill(self._la_key(c))
                log.info("local aggregator %d SIGKILLed after its first local round of round %d", c, self.coord.round)
        elif kind == "final":
            rs.final[c] = content
            if content.get("torch_loaded"):
                self.la_torch.add(c)
            self._check_done()

    def _check_done(self) -> None:
        if all(self._delivered(w - AGGREGATOR_BASE) for w in self.coord.expect):
            self.done.set()

    # ---- rounds ---------------------------------------------------------------------------
    async def _start_cluster(
        self,
        c: int,
        r: int,
        plan: HierRoundPlan,
        members: list[int],
        victims: set[int],
        extra_down: dict[int, float],
        payload: bytes,
    ) -> None:
        ts = self.opt.time_scale
        idx = plan.index()
        local = []
        for lp in plan.local:
            devs, paced = {}, 0.0
            for d in members:
                i = idx.get(d)
                down = float(lp.down.time_s[i]) if i is not None else extra_down.get(d, 0.0)
                up = float(lp.up.time_s[i]) if i is not None else 0.0
                devs[str(d)] = {"down_wait_s": down * ts, "up_wait_s": up * ts}
                if self.orchestrated:  # members move between LAs: each is introduced with its weight
                    devs[str(d)]["n_train"] = int(self.sim.n_train[d])
                paced = max(paced, (down + float(self.sim.compute_s[d]) + up) * ts)
            local.append({"key": lp.key, "devices": devs, "paced_s": paced})
        kill = {
            str(d): float(stream_rng(self.exp.spec.seed, Stream.FAILURES, r, d).random())
            * float(self.sim.compute_s[d])
            * ts
            for d in members
            if d in victims
        }
        j = {int(x): i for i, x in enumerate(plan.present)}.get(c)
        la_up = float(plan.la_up.time_s[j]) * ts if self.k > 1 and j is not None else 0.0
        la_down = float(plan.la_down.time_s[j]) * ts if self.k > 1 and j is not None else 0.0
        wr = r + self.offset  # the wire round; after a resume above every earlier one
        msg = {
            "cmd": "round",
            "round": wr,
            "up_wait_s": la_up,
            "drop_update": False,
            "local": local,
            "kill": kill,
            "report": "update" if self.k > 1 else "model",
            "offset": self.offset,
        }
        wid = aggregator_id(c)
        ctrl = self.coord.make(fm.MsgType.CONTROL, wid, wr, "none", json.dumps(msg).encode())
        if await self._send_la(c, ctrl):
            self.control_bytes += len(ctrl)
        if la_down > 0:
            await asyncio.sleep(la_down)
        data = self.coord.make(fm.MsgType.MODEL, wid, wr, self.a.downlink_encoding, payload)
        if await self._send_la(c, data) and self.rs is not None:
            self.rs.model_bytes[c] = len(data)

    async def _restart_dead(self, r: int, clusters: list[int], taking: list[int], events: list[dict[str, Any]]) -> None:
        """Restart what died earlier: local aggregators of clusters taking part, then their devices."""
        for c in clusters:
            if self.procs.alive(self._la_key(c)) and c not in self.la_writers:
                self.procs.kill(self._la_key(c))  # running but cut off from the GA: start it afresh
            if not self.procs.alive(self._la_key(c)):
                await self.procs.wait_exit(self._la_key(c))
                ok = await self._start_la(c, first=False)
                self.restarts["aggregator"] += 1
                events.append(
                    self._event(
                        r, None, "restart", f"local aggregator {c} process restarted" + ("" if ok else " (no HELLO)")
                    )
                )
        for d in taking:
            if not self.procs.alive(d):
                await self.procs.wait_exit(d)
                await self._spawn_device(d)
                self.rejected_retired.update(self.device_rejected.pop(d, {}))  # its counts start again
                self.restarts["device"] += 1
                events.append(self._event(r, d, "restart", f"device {d} process restarted"))

    def _plan(self, r: int, ids: np.ndarray, failing: set[int]) -> tuple[HierRoundPlan, dict[int, float]]:
        """The round's plan (the engine's), and the model's download time of each device that
        fails in the round without being online (it still receives the model)."""
        exp, sim = self.exp, self.sim
        plan = plan_round(
            exp.fleet.links,
            sim.la_links,
            sim.assign,
            exp.spec.seed,
            r,
            self.L,
            ids,
            sim.up_bytes,
            sim.down_bytes,
            exp.fleet.medium,
            sim.compute_s,
        )
        extra_down = {}
        for d in sorted(failing - set(map(int, ids))):
            lk = take_links(exp.fleet.links, np.array([d]))
            extra_down[d] = float(lossless(sim.down_bytes, lk.down_bps, lk).time_s[0])
        return plan, extra_down

    async def _round(self, r: int, st: HState) -> HState:
        exp, sim, a = self.exp, self.sim, self.a
        n, L = self.n, self.L
        wall0 = time.perf_counter()
        events: list[dict[str, Any]] = []
        changes = exp.timeline.changes(r)
        for d, kind in changes:
            events.append(self._event(r, d, kind, f"device {d} {kind}"))
        online = exp.timeline.online(r)
        self.change_cost = await self._orchestrate(r, st, changes, online, events) if self.orchestrated else 0.0
        ids = np.flatnonzero(online & (sim.assign >= 0))  # outside an orchestrated configuration: no part
        failing = {d for d, kind in changes if kind == "failure" and d not in self.gone}
        kill_now = {int(d) for d in self.opt.kill_devices.get(r, []) if online[int(d)]}
        victims = failing | kill_now
        taking = sorted(set(map(int, ids)) | failing)
        taking_mask = np.zeros(n, dtype=bool)
        taking_mask[taking] = True
        clusters = sorted({int(sim.assign[d]) for d in taking})
        await self._restart_dead(r, clusters, taking, events)
        plan, extra_down = self._plan(r, ids, failing)
        self._write_peers()
        self.coord.round = r + self.offset
        self.coord.updates, self.coord.update_bytes, self.coord.metrics = {}, {}, {}
        rs = RoundState(
            clusters,
            {c: [] for c in clusters},
            kill={int(c) for c in self.opt.kill_aggregators.get(r, [])} & set(clusters),
        )
        self.rs = rs
        for c in clusters:
            if c not in self.la_writers:
                rs.failed[c] = "no_hello"
        self.coord.expect = {aggregator_id(c) for c in clusters if c not in rs.failed}
        self.done = asyncio.Event()
        self._check_done()
        g = st.global_params
        payload = enc.encode(g.numpy(), a.downlink_encoding, tensor_sizes=self.sizes)
        members = {c: [d for d in taking if int(sim.assign[d]) == c] for c in clusters}
        await asyncio.gather(
            *(
                self._start_cluster(c, r, plan, members[c], victims, extra_down, payload)
                for c in clusters
                if c not in rs.failed
            )
        )
        for d in sorted(victims):
            why = "permanent failure" if d in failing else "kill_devices"
            events.append(
                self._event(
                    r, d, "killed", f"SIGKILL during local round 1 of round {r}, after its model arrived ({why})"
                )
            )
        paced = float(
            max((sum(float(lp.down.time_s.max(initial=0.0) + lp.up.time_s.max(initial=0.0)) for lp in plan.local)), 0.0)
            + L * float(sim.compute_s.max(initial=0.0))
        )
        timeout = (L + 1) * self.opt.round_timeout_s + 2 * paced * self.opt.time_scale + self.opt.start_timeout_s
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            for w in sorted(self.coord.expect):
                c = w - AGGREGATOR_BASE
                if not self._delivered(c):
                    rs.failed[c] = "timeout"
        for c in sorted(rs.killed):
            rs.failed[c] = "killed"
        lost = {
            int(d)
            for reps in rs.local.values()
            for rep in reps
            for d, m in rep["devices"].items()
            if m["status"] == "disconnected"
        }
        await asyncio.gather(*(self.procs.wait_exit(d) for d in lost))  # exit codes: oom, crash
        # the processes killed in this round are gone before the next round looks for the dead
        await asyncio.gather(
            *(self.procs.wait_exit(self._la_key(c)) for c in rs.killed), *(self.procs.wait_exit(d) for d in victims)
        )
        self.gone |= failing
        return self._record(r, st, plan, rs, taking, taking_mask, victims, failing, extra_down, events, wall0)

    # ---- coordinator resume ---------------------------------------------------------------
    # ---- memory and torch ------------------------------------------------------------------
    def _sample_memory(self) -> None:
        total: Counter[str] = Counter()
        cpu = 0.0
        for key, pid in self.procs.pids.items():
            if not self.procs.alive(key):
                continue
            name = f"la{key - self.n}" if key >= self.n else f"d{key}"
            note_memory(self.mem_max, total, name, pid)
            if key < self.n:
                cpu += proc_cpu_s(pid)
            if maps_torch(pid):
                self.torch_mapped.add(name)
        for name, pid in (
            ("coordinator", os.getpid()),
            ("forkserver", self.procs.proc.pid if self.procs.proc is not None else -1),
        ):
            note_memory(self.mem_max, total, name, pid)
            if name == "forkserver" and maps_torch(pid):
                self.torch_mapped.add(name)
        for x in ("Rss", "Pss"):
            self.total_mem_kb[x] = max(self.total_mem_kb.get(x, 0), total.get(x, 0))
        self.devices_cpu_s = max(self.devices_cpu_s, cpu)

    # ---- the whole run -----------------------------------------------------------------------
    async def _start_processes(self) -> None:
        """Fork the local aggregators, then the devices with their ports; wait until every LA is ready."""
        self.coord.expect = {aggregator_id(c) for c in range(self.k)}  # "ready" reports of round 0
        started = await asyncio.gather(*(self._start_la(c, first=True) for c in range(self.k)))
        if not all(started):
            bad = [c for c, ok in enumerate(started) if not ok]
            raise TinyTwinError(
                f"emulate: local aggregator(s) {bad} did not start in {self.opt.start_timeout_s} s; "
                f"see {self.edir / 'logs'}"
            )
        self._write_devices()
        for d in map(int, np.flatnonzero(self.spawned)):  # an orchestrated run's joiners start later
            await self._spawn_device(d)
        start_events = []
        try:
            await asyncio.wait_for(
                asyncio.gather(*(e.wait() for e in self.la_ready.values())), self.opt.start_timeout_s + 5
            )
        except TimeoutError:
            late = [c for c, e in self.la_ready.items() if not e.is_set()]
            start_events.append(
                self._event(0, None, "no_hello", f"local aggregator(s) {late}: not every device connected in time")
            )
        self.startup_s = time.perf_counter() - self.t_start
        if start_events:
            self.store.add_events(self.run_id, start_events)
        self._write_peers()

    async def run(self, progress: ProgressFn | None = None, st: HState | None = None) -> HState:
        """Emulate the rounds after ``st`` (None: a new run; else a resume: adopt the processes)."""
        self.t_start = time.perf_counter()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        server, self.port = await bind_coordinator(
            self.edir,
            self._serve,
            max(128, 2 * self.k),
            self.resume,
            self.opt,
            "the local aggregators of a hierarchical run call",
        )
        try:
            await self.procs.start(child_env(), self.edir / "logs" / "forkserver.log")
            if st is not None:
                await self._resume_processes(st)
        except BaseException:
            await self.procs.close(wait_s=0.0)
            server.close()
            await server.wait_closed()
            raise
        resumed = st is not None
        st = await self._rounds(st if st is not None else self.sim.initial_state(), resumed, progress, server)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        self.coordinator_cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return st

    async def _rounds(
        self, st: HState, resumed: bool, progress: ProgressFn | None, server: asyncio.AbstractServer
    ) -> HState:
        """Rounds ``st.round + 1 ..``, then stop the processes; processes and server closed however this ends."""
        spec = self.exp.spec
        finished = False
        try:
            if not resumed:
                await self._start_processes()
            for r in range(st.round + 1, spec.rounds + 1):
                if st.orch is not None and st.orch.stopped_round is not None:
                    break  # the orchestrator's budget is spent
                st = await self._round(r, st)
                if r == 1 or r % max(1, self.opt.memory_sample_every) == 0 or r == spec.rounds:
                    t0 = time.perf_counter()
                    self._sample_memory()
                    self.sampling_s += time.perf_counter() - t0
                if progress is not None:
                    acc = st.accuracies[-1][1] if st.accuracies and st.accuracies[-1][0] == r else None
                    progress(r, {"accuracy": acc, "sim_time_s": st.sim_time_s})
            stop = b'{"cmd": "stop"}'
            for c in range(self.k):  # devices of a dead LA would keep calling it: end them
                if c not in self.la_writers:
                    for d in self.members[c]:
                        self.procs.kill(d)
            for c in list(self.la_writers):
                await self._send_la(
                    c, self.coord.make(fm.MsgType.CONTROL, aggregator_id(c), self.coord.round, "none", stop)
                )
            finished = True
            # the last global model and cluster models, for inspection and the twin-fidelity test
            finals: dict[str, Any] = dict(self.final_models)
            np.savez(self.edir / "final_models.npz", **finals)
        finally:
            await self.procs.close(wait_s=10.0 if finished else 0.0)
            server.close()
            await server.wait_closed()
        return st
