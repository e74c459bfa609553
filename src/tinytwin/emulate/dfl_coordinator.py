"""The coordinator of a decentralized emulation: bootstrap directory, metrics collector, faults.

Decentralized algorithms (DecFedAvg, server-free FL, gossip, Gist, segmented gossip) run with one OS process
per device (:mod:`tinytwin.emulate.peer`, forked by :mod:`tinytwin.emulate.forkserver`), and
the models (Gist: segments) travel *device to device* over direct TCP connections. The
coordinator never relays a model. Devices of firmware groups (``twin: firmware``,
``--twin firmware``) train and merge with the C client on QEMU; their images are built here
before any process starts (:func:`tinytwin.emulate.firmware_fleet.firmware_configs`). It

- prepares the experiment exactly like the simulator (data, partition, model, topology,
  link timeline, memory plans with the algorithm's receive buffers) and writes one data
  shard, one config and one key file per device (the keys of the device's own links and
  of its link to the coordinator only), and for Gist the shared validation set;
- collects HELLOs (pid, listening port) and hands each device the directory of its link
  partners' ports;
- starts every round with one CONTROL per device carrying that device's entry of
  :func:`tinytwin.emulate.dfl_directory.plan_round` (whom to send to, whom to expect,
  its mixing row, its learning rate from the simulator's per-device schedule);
- kills the devices whose permanent failure falls in the round (``failures.permanent``,
  ``permanent_probability``) with ``SIGKILL`` in the middle of the round, and tells their
  partners (``peer_down``) as soon as it sees their connection close, so the survivors
  merge over the remaining graph without waiting for a timeout;
- receives every survivor's METRICS and model, evaluates the models on the shared test set
  with the simulator's :func:`~tinytwin.engines.evaluate_many.evaluate_many`, computes the
  consensus distance, and writes the round to the same tables as the simulator
  (``rounds``, ``device_rounds``, ``events``, ``round_metrics``, ``device_metrics``) with
  ``twin = 'emulate'``, so ``tinytwin report`` and ``tinytwin compare`` work unchanged.

Every committed round also stores the coordinator's own state (schedule, energy, totals, who
is gone) as the round's checkpoint, so a killed coordinator resumes
(:func:`resume_dfl_emulation`): it binds the same address, adopts the device processes the
killed one's fork server left running (``emulate/peers.json``), and tells them to roll back to
the last committed round; their models never leave them.

See docs/emulation.md, "Decentralized runs".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.algorithms import gist_np
from tinytwin.algorithms.attacks import attack_of
from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.emulate.device_config import DeviceConfig, memory_budget
from tinytwin.emulate.dfl_algorithms import REGISTRY, lookup
from tinytwin.emulate.dfl_directory import link_key, plan_round
from tinytwin.emulate.dfl_record import DflRecording
from tinytwin.emulate.dfl_state import DflOptions as DflOptions  # re-exported: the family's options
from tinytwin.emulate.dfl_summary import DflSummary
from tinytwin.emulate.fork_fleet import PEERS_FILE, proc_cpu_s
from tinytwin.emulate.lifecycle import (
    ProgressFn,
    await_hello,
    bind_coordinator,
)
from tinytwin.emulate.processes import child_env, exit_kind, note_memory
from tinytwin.emulate.rundir import write_json
from tinytwin.emulate.serving import accepted_frames
from tinytwin.emulate.tls import run_ca_file
from tinytwin.errors import TinyTwinError
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store.files import save_npy_private, save_npz_private, write_private
from tinytwin.wire import frame as fm

log = logging.getLogger("tinytwin.emulate.dfl")
MiB = 2**20


def check_dfl_emulatable(spec: ExperimentSpec) -> None:
    """Refuse, in one line, what the decentralized emulation does not run."""
    a = spec.algorithm
    if a.name not in REGISTRY:
        raise TinyTwinError(
            f"emulate runs the decentralized algorithms {', '.join(REGISTRY)}; {a.name} is "
            "simulation-only for now (tinytwin run)"
        )
    if a.schedule != "sync":
        raise TinyTwinError("emulate runs decentralized learning in lock-step rounds only (algorithm.schedule: sync)")
    if a.name == "segmented_gossip" and a.encoding == "int8":
        raise TinyTwinError(
            "emulate: segmented gossip with int8 payloads is simulation-only (the simulator scales "
            "a pulled segment with the whole model's per-tensor scales); use float32 or float16"
        )
    if getattr(spec.failures, "link_down", None):
        raise TinyTwinError(
            "emulate: failures.link_down cuts links to a server; decentralized runs take "
            "device-to-device links down with topology.link_events"
        )


# ---------------------------------------------------------------------------------- processes


# ---------------------------------------------------------------------------------- the run


class DflEmulation(DflRecording, DflSummary):
    """One decentralized emulated run: device processes, directory, rounds, results."""

    # ---- device files -------------------------------------------------------------------
    def _write_device_files(self, port: int) -> None:
        exp, a = self.exp, self.a
        ds = exp.dataset
        save_npy_private(self.edir / "devices" / "initial.npy", exp.initial_params().numpy())
        if a.name == "gist":  # the shared validation set every device scores itself on (the simulator's)
            val = gist_np.validation_indices(exp.spec.seed, len(ds.y_test), a.gist.validation_size)
            save_npz_private(
                self.edir / "devices" / "validation.npz", x=ds.x_test[val].reshape(len(val), -1), y=ds.y_test[val]
            )
        plan_of = {pl.group: pl for pl in self.plans}
        p = exp.model.num_params
        max_frame = max(fm.frame_size(self.payload_bytes), 64 * 1024)
        L = exp.fleet.links
        algorithm = lookup(a).device_block(a, p)  # what a peer needs of the algorithm (peer.py)
        attacks = [at.model_dump() for at in exp.spec.attacks]
        for g in exp.fleet.groups:
            plan = plan_of[g.name]
            for d in map(int, g.devices):
                idx = self.train_idx[d]
                save_npz_private(
                    self.edir / "devices" / f"d{d}.npz", x=ds.x_train[idx].reshape(len(idx), -1), y=ds.y_train[idx]
                )
                kf = self.edir / "keys" / f"d{d}.json"
                write_private(
                    kf,
                    json.dumps(
                        {
                            "coordinator": self.coord.keys[d].hex(),
                            "links": {str(j): link_key(self.run_key, d, j).hex() for j in self.partners[d]},
                        }
                    ),
                )
                DeviceConfig(
                    device=d,
                    host="127.0.0.1",
                    port=port,
                    key_file=str(kf),
                    data_file=str(self.edir / "devices" / f"d{d}.npz"),
                    seed=exp.spec.seed,
                    num_params=p,
                    tensor_sizes=list(exp.model.tensor_sizes),
                    train=LocalTraining.from_spec(a),
                    encoding=a.encoding,
                    time_scale=self.opt.time_scale,
                    compute_s=float(self.compute_s[d]),
                    arena_bytes=int(plan.ram_needed),
                    mem_budget_bytes=memory_budget(self.opt, plan.ram_available, d),
                    max_frame=max_frame,
                    reconnect_grace_s=self.opt.reconnect_grace_s,
                    extra={
                        "initial_file": str(self.edir / "devices" / "initial.npy"),
                        "linears": self.linears_rows,
                        "algorithm": algorithm,
                        "validation_file": str(self.edir / "devices" / "validation.npz"),
                        "link": self.links[d].__dict__,
                        "partners": {str(j): float(L.down_bps[j]) for j in self.partners[d]},
                        "merge_timeout_s": self.opt.merge_timeout_s,
                        "attack": attack_of(attacks, d, exp.fleet.num_devices, exp.spec.seed),
                        "tls_ca": str(run_ca_file(self.edir)) if self.opt.tls else None,
                        **self.firmware.get(d, {}),
                    },
                ).write(self.edir / "devices" / f"d{d}.json")

    # ---- connections --------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        device: int | None = None
        try:
            async for fr, content, total in accepted_frames(
                reader,
                writer,
                self.coord,
                lambda: device,
                on_reject=lambda dev, exc: log.warning(
                    "rejected frame from device %s: %s", dev, f"{exc.reason} (header); connection closed"
                ),
            ):
                self.control_bytes += total
                if fr.msg_type == fm.MsgType.HELLO:
                    device = fr.sender
                    self.writers[device] = writer
                    self.ports[device] = int(content.get("port", 0))
                    if content.get("reconnects"):
                        self.reconnects += 1
                    self.hello[device].set()
                elif device in self.killed:
                    continue  # a report that left just before the kill
                elif fr.msg_type == fm.MsgType.METRICS and content.get("kind") == "resumed":
                    self.resumed[fr.sender] = content
                    if set(self.resumed) >= self.coord.expect:
                        self.resume_done.set()
                elif fr.msg_type == fm.MsgType.METRICS:
                    self.coord.metrics[fr.sender] = content
                    if content.get("torch_loaded"):
                        self.torch_devices.add(fr.sender)
                    self._check_done()
                elif fr.msg_type == fm.MsgType.UPDATE:
                    self.coord.updates[fr.sender] = content
                    self._check_done()
        finally:
            if device is not None and self.writers.get(device) is writer:
                del self.writers[device]
                await self._lost(device)
            writer.close()

    async def _lost(self, d: int) -> None:
        """A device's coordinator connection closed: it is gone for the rest of the run.
        Tell its partners at once, so nobody waits for its model until a timeout."""
        if d in self.dead or self.stopping:
            return
        self.dead[d] = "killed" if d in self.killed else "disconnected"
        self.resolving.add(d)  # the round records how it ended once its exit status is known
        await self._notify_down(d)
        if d not in self.killed:
            ev = self.procs.exited.get(d)
            if ev is not None:
                try:
                    await asyncio.wait_for(ev.wait(), 2.0)
                except TimeoutError:
                    pass
            self.dead[d] = exit_kind(
                self.procs.exits.get(d),
                workdir=Path(self.firmware[d]["firmware"]["workdir"]) if d in self.firmware else None,
                log_file=self.edir / "logs" / f"d{d}.log",
            )
        self.resolving.discard(d)
        self._check_done()

    def _check_done(self) -> None:
        waiting = self.reporting - set(self.dead) - self.killed
        if all(d in self.coord.metrics and (d in self.coord.updates or not self.want_models) for d in waiting):
            self.done.set()

    # ---- faults -------------------------------------------------------------------------
    async def _kill(self, d: int, r: int, events: list[dict[str, Any]]) -> None:
        """SIGKILL during the round: after a random fraction of the device's paced compute time."""
        frac = float(stream_rng(self.exp.spec.seed, Stream.FAILURES, r, d, 1).random())
        delay = frac * float(self.compute_s[d]) * self.opt.time_scale
        if delay > 0:
            await asyncio.sleep(delay)
        self.killed.add(d)
        self.procs.kill(d)
        events.append(
            self._event(
                r,
                d,
                "killed",
                f"SIGKILL {delay:.3f} s into round {r} (permanent failure); its neighbours merge without it",
            )
        )
        if d in self.absent:  # already gone (killed in this round before a coordinator resume): tell its partners
            self.absent.discard(d)
            await self._lost(d)

    # ---- rounds -------------------------------------------------------------------------
    def _sample_memory(self) -> None:
        """Max RSS/PSS per device process, and the largest total over *all* the run's processes
        (devices, fork server, coordinator) at one sampling instant; device CPU seconds."""
        total: Counter[str] = Counter()
        cpu = 0.0
        for d, pid in self.procs.pids.items():
            if self.procs.alive(d):
                note_memory(self.mem_max, total, d, pid)
                cpu += proc_cpu_s(pid)
        for name, pid in (
            ("coordinator", os.getpid()),
            ("forkserver", self.procs.proc.pid if self.procs.proc is not None else -1),
        ):
            note_memory(self.mem_max, total, name, pid)
        for k in ("Rss", "Pss"):
            self.total_mem_kb[k] = max(self.total_mem_kb.get(k, 0), total.get(k, 0))
        self.devices_cpu_s = max(self.devices_cpu_s, cpu)

    async def _round(self, r: int, st: dict[str, Any]) -> None:
        exp, spec, a = self.exp, self.exp.spec, self.a
        n = self.n
        wall0 = time.perf_counter()
        events: list[dict[str, Any]] = []
        changes = exp.timeline.changes(r)
        for d, kind in changes:
            events.append(self._event(r, d, kind, f"device {d} {kind}"))
        for u, v, kind in self.net.links.changes(r):
            events.append(self._event(r, None, kind, f"link {u}-{v} {kind[5:]}"))
        alive = np.array([d not in self.dead for d in range(n)])
        failing = np.zeros(n, dtype=bool)
        failing[[d for d, kind in changes if kind == "failure"]] = True
        # a device whose permanent failure falls in round r starts the round and is killed during it
        taking = (exp.timeline.online(r) | failing) & alive
        victims = [int(d) for d in np.flatnonzero(failing & alive)]
        plan = plan_round(a, spec.seed, self.net, taking, r, exp.model.num_params, self.n_train)
        self.coord.round = r + self.offset  # the round's number on the wire
        self.coord.updates, self.coord.metrics = {}, {}
        self.coord.expect = {int(d) for d in np.flatnonzero(taking)}
        self.reporting = set(self.coord.expect)
        self.want_models = r % spec.evaluation.every == 0 or r == spec.rounds
        self.done = asyncio.Event()
        self._check_done()

        def control(d: int) -> dict[str, Any]:
            msg = plan.entries[d].control(r, float(self.lr_sched.lr[d]), plan.steps)
            msg["report_model"] = self.want_models
            if self.offset:
                msg["wire"] = r + self.offset
            return msg

        await asyncio.gather(*(self._send_control(d, r, control(d)) for d in range(n) if alive[d]))
        kills = [asyncio.create_task(self._kill(d, r, events)) for d in victims]
        paced = float(self.compute_s[taking].max(initial=0.0)) * self.opt.time_scale * 2
        timeout = self.opt.round_timeout_s + self.opt.merge_timeout_s + paced
        try:
            await asyncio.wait_for(asyncio.gather(self.done.wait(), *kills), timeout)
        except TimeoutError:
            for d in sorted(self.reporting - set(self.dead) - self.killed - set(self.coord.metrics)):
                events.append(self._event(r, d, "timeout", f"device {d} did not report round {r} in {timeout:.0f} s"))
        t_end = time.monotonic() + 2.5  # a device that died this round: its exit status (oom, firmware fault)
        while self.resolving and time.monotonic() < t_end:
            await asyncio.sleep(0.01)
        for d in sorted(set(self.dead) - set(st["dead_recorded"])):
            st["dead_recorded"].add(d)
            if self.dead[d] != "killed":
                events.append(self._event(r, d, self.dead[d].split(" ")[0], f"device {d}: {self.dead[d]}"))
        for dev, detail in self.coord.drain_rejects():
            events.append(self._event(r, dev, "frame_rejected", f"coordinator: {detail}"))
        self._record(r, st, plan, taking, victims, events, wall0)
        if r == 1 or r % max(1, self.opt.memory_sample_every) == 0 or r == spec.rounds:
            t0 = time.perf_counter()  # after the round's wall time was taken: not part of it
            self._sample_memory()
            self.sampling_s += time.perf_counter() - t0

    # ---- coordinator resume ---------------------------------------------------------------
    # ---- the whole run --------------------------------------------------------------------
    async def run(self, progress: ProgressFn | None = None, st: dict[str, Any] | None = None) -> dict[str, Any]:
        """Emulate the rounds after ``st`` (None: a new run; else a resume: adopt the devices)."""
        self.t_start = time.perf_counter()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        self.resume_done = asyncio.Event()
        server, port = await bind_coordinator(
            self.edir,
            self._serve,
            max(128, 2 * self.n),
            self.resume,
            self.opt,
            "the devices of a decentralized run hold their models and call",
        )
        resumed = st is not None
        if not resumed:
            self._write_device_files(port)
        st = st if st is not None else self.initial_st()
        try:
            if resumed:
                await self._resume_devices(st)
            else:
                await self._start_devices(st)
        except BaseException:
            await self.procs.close(wait_s=0.0)
            server.close()
            await server.wait_closed()
            raise
        return await self._rounds(st, progress, server, cpu0)

    async def _start_devices(self, st: dict[str, Any]) -> None:
        """Fork every device, wait for the HELLOs, hand out the directory."""
        await self.procs.start(child_env(), self.edir / "logs" / "forkserver.log")
        start_events: list[dict[str, Any]] = []
        for d in range(self.n):
            await self.procs.spawn(d, self.edir / "devices" / f"d{d}.json", self.edir / "logs" / f"d{d}.log")
        assert self.procs.proc is not None
        write_json(
            self.edir / PEERS_FILE,
            {"forkserver": self.procs.proc.pid, "devices": {str(d): pid for d, pid in self.procs.pids.items()}},
        )

        async def hello(d: int) -> None:
            got = await await_hello(self.hello[d], lambda: self.procs.alive(d), self.opt.start_timeout_s)
            if got != "hello":
                self.dead[d] = "no_hello"
                st["dead_recorded"].add(d)
                start_events.append(
                    self._event(0, d, "no_hello", f"device {d} did not say HELLO in {self.opt.start_timeout_s} s")
                )
                self.procs.kill(d)

        await asyncio.gather(*(hello(d) for d in range(self.n)))
        await asyncio.gather(
            *(
                self._send_control(
                    d,
                    0,
                    {"cmd": "directory", "ports": {str(j): self.ports[j] for j in self.partners[d] if j in self.ports}},
                )
                for d in range(self.n)
                if d in self.writers
            )
        )
        self.startup_s = time.perf_counter() - self.t_start
        if start_events:
            self.store.add_events(self.run_id, start_events)

    async def _rounds(
        self, st: dict[str, Any], progress: ProgressFn | None, server: asyncio.AbstractServer, cpu0: Any
    ) -> dict[str, Any]:
        """Rounds ``st["round"] + 1 ..``, then stop the devices; processes and server closed however this ends."""
        spec = self.exp.spec
        finished = False
        if self.startup_s is None:
            self.startup_s = time.perf_counter() - self.t_start
        try:
            for r in range(int(st["round"]) + 1, spec.rounds + 1):
                self.modelled_s = float(st.get("sim_time_s", 0.0))
                await self._round(r, st)
                if progress is not None:
                    acc = st["accuracies"][-1][1] if st["accuracies"] and st["accuracies"][-1][0] == r else None
                    progress(r, {"accuracy": acc, "sim_time_s": st["sim_time_s"]})
            self.stopping = True
            await asyncio.gather(*(self._send_control(d, st["round"], {"cmd": "stop"}) for d in list(self.writers)))
            finished = True
            # every device's last reported model, for inspection and the twin-fidelity test
            finals: dict[str, Any] = {f"d{d}": w for d, w in sorted(self.models.items())}
            np.savez(self.edir / "final_models.npz", **finals)
        finally:
            await self.procs.close(wait_s=10.0 if finished else 0.0)
            server.close()
            await server.wait_closed()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        st["coordinator_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return st
