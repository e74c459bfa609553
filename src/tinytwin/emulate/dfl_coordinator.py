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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms import gist_np
from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.algorithms.lr_schedules import LRSchedule
from tinytwin.core.preflight import check_family
from tinytwin.emulate import shaper
from tinytwin.emulate.device_config import DeviceConfig, memory_budget
from tinytwin.emulate.dfl_algorithms import REGISTRY, lookup
from tinytwin.emulate.dfl_directory import RoundPlan, link_key, link_partners, plan_round
from tinytwin.emulate.firmware_fleet import firmware_configs, firmware_groups
from tinytwin.emulate.fork_fleet import PEERS_FILE, WIRE_STRIDE, ForkServer, proc_cpu_s
from tinytwin.emulate.frame_checks import Coordinator
from tinytwin.emulate.lifecycle import (
    ProgressFn,
    bind_coordinator,
    coordinator_run,
    create_emulation_run,
    load_run_key,
    resume_event,
    resume_prepared,
)
from tinytwin.emulate.model_rows import mlp_rows
from tinytwin.emulate.options import EmulateOptions, options_as, options_from_json
from tinytwin.emulate.outcome import finish_peer_run
from tinytwin.emulate.processes import adopt_recorded, child_env, exit_kind, note_memory
from tinytwin.emulate.run_stats import firmware_summary, run_stats
from tinytwin.emulate.rundir import write_json
from tinytwin.emulate.serving import accepted_frames
from tinytwin.emulate.skeleton import CoordinatorClock, firmware_metrics
from tinytwin.engines.decentralized import memory_plans, round_metric_rows
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.engines.experiment import Experiment, prepare
from tinytwin.engines.network import Network
from tinytwin.engines.summary import common_summary
from tinytwin.errors import TinyTwinError
from tinytwin.fleet.cost import compute_flops, energy_joules
from tinytwin.net.topology import components
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore
from tinytwin.wire import frame as fm

log = logging.getLogger("tinytwin.emulate.dfl")
MiB = 2**20


@dataclass
class DflOptions(EmulateOptions):
    merge_timeout_s: float = 30.0
    """A device stops waiting for a neighbour's model after this long (wall seconds, on top of
    pacing) and merges what arrived; normally the coordinator's ``peer_down`` comes first."""
    memory_sample_every: int = 5
    """Sample every process's RSS/PSS after round 1, every this many rounds and the last round
    (reading 200 smaps_rollup files costs the coordinator CPU)."""


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
    if a.name == "gossip" and a.gossip.exchange != "push":
        raise TinyTwinError(
            "emulate: gossip exchange push_pull merges pair by pair in one global order, which "
            "devices cannot reproduce; use exchange: push"
        )
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


class DflEmulation(CoordinatorClock):
    """One decentralized emulated run: device processes, directory, rounds, results."""

    def __init__(
        self,
        exp: Experiment,
        network: Network,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        options: DflOptions,
        resume: bool = False,
    ) -> None:
        self.exp, self.net, self.store, self.run_id, self.run_dir, self.opt = (
            exp,
            network,
            store,
            run_id,
            run_dir,
            options,
        )
        spec = exp.spec
        a = spec.algorithm
        self.a = a
        self.n = exp.fleet.num_devices
        self.edir = run_dir / "emulate"
        for sub in ("keys", "devices", "logs"):
            (self.edir / sub).mkdir(parents=True, exist_ok=True)
        # resumed: the devices of the killed coordinator hold keys from it
        self.run_key = load_run_key(self.edir, resume)
        self.resume = resume
        self.linears_rows = mlp_rows(exp)
        p = exp.model.num_params
        # HELLO / METRICS / model reports on the coordinator links: the centralized twin's checks
        self.coord = Coordinator(self.n, self.run_key, p, list(exp.model.tensor_sizes), "float32")
        self.coord.max_frame = max(self.coord.max_frame, fm.frame_size(4 * p) + 1024, 1 << 20)
        self.partners = link_partners(a, network)
        self.train_idx = [q[: a.train_samples] if a.train_samples else q for q in exp.parts]
        self.n_train = np.array([len(q) for q in self.train_idx], dtype=np.int64)
        flops = compute_flops(self.n_train, a.local_epochs, a.batch_size, exp.flops_per_sample, exp.flops_per_step)
        self.compute_s = flops / exp.fleet.flops_per_s
        ls = a.lr_schedule
        self.lr_sched = LRSchedule(
            ls.name,
            a.lr,
            np.full(self.n, spec.rounds, dtype=np.int64),
            tuple(ls.stair_fractions),
            ls.stair_factor,
            tuple(ls.patience_fractions),
            ls.loss_factor,
            ls.min_lr,
        )
        self.plans = memory_plans(exp)
        ds = exp.dataset
        self.x_test, self.y_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
        L = exp.fleet.links
        self.links = [
            shaper.Link(
                float(L.latency_s[d]),
                float(L.up_bps[d]),
                float(L.down_bps[d]),
                float(L.loss[d]),
                int(L.mtu_bytes[d]),
                int(L.header_bytes[d]),
            )
            for d in range(self.n)
        ]
        self.payload_bytes = lookup(a).payload_bytes(a, p, list(exp.model.tensor_sizes))  # the largest message
        # Firmware devices: images built (and a model too big for a board refused) before any
        # process starts; merges=True sizes the arena for the M / G merge buffers.
        self.firmware = firmware_configs(
            exp,
            self.linears_rows,
            self.edir / "firmware",
            firmware_groups(exp, options.firmware_all),
            merges=True,
            arena_override=options.firmware_arena_override,
        )
        self.qemu_mem: dict[int, dict[str, int]] = {}
        self.fw_rounds: list[tuple[int, float, float]] = []  # (insns, firmware s, cost-model s) per device-round
        self.fw_merge_insns: list[int] = []
        self.gist_merges = 0
        self.procs = ForkServer()
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.hello: dict[int, asyncio.Event] = {d: asyncio.Event() for d in range(self.n)}
        self.ports: dict[int, int] = {}
        self.dead: dict[int, str] = {}  # device -> how it ended (killed, crash, oom, ...)
        self.killed: set[int] = set()
        self.models: dict[int, np.ndarray] = {}
        self.reporting: set[int] = set()  # devices whose report the round waits for
        self.want_models = True  # evaluation round: devices also send their models
        self.done = asyncio.Event()
        self.mem_max: dict[int | str, dict[str, int]] = {}
        self.total_mem_kb: dict[str, int] = {}
        self.devices_cpu_s = 0.0
        self.sampling_s = 0.0
        self.torch_devices: set[int] = set()
        self.stopping = False  # after the last round: connections closing is normal
        self.control_bytes = 0
        self.peer_down_sent = 0
        self.merge_timeouts = 0
        self.local_rounds = np.zeros(self.n, dtype=np.int64)
        self.energy = np.zeros(self.n)
        # coordinator resume: wire round offset, wall seconds of earlier coordinators, devices that
        # did not come back but are killed in the replayed round anyway, reconnects, acks
        self.offset = 0
        self.wall_offset = 0.0
        self.modelled_s = 0.0  # the cost model's clock at the start of the round in flight
        self.absent: set[int] = set()
        self.resolving: set[int] = set()  # devices whose connection closed, exit status awaited
        self.reconnects = 0
        self.resumed: dict[int, dict[str, Any]] = {}
        self.resume_done = asyncio.Event()
        self.t_start = time.perf_counter()

    # ---- device files -------------------------------------------------------------------
    def _write_device_files(self, port: int) -> None:
        exp, a = self.exp, self.a
        ds = exp.dataset
        np.save(self.edir / "devices" / "initial.npy", exp.initial_params().numpy())
        if a.name == "gist":  # the shared validation set every device scores itself on (the simulator's)
            val = gist_np.validation_indices(exp.spec.seed, len(ds.y_test), a.gist.validation_size)
            np.savez(self.edir / "devices" / "validation.npz", x=ds.x_test[val].reshape(len(val), -1), y=ds.y_test[val])
        plan_of = {pl.group: pl for pl in self.plans}
        p = exp.model.num_params
        max_frame = max(fm.frame_size(self.payload_bytes), 64 * 1024)
        L = exp.fleet.links
        algorithm = lookup(a).device_block(a, p)  # what a peer needs of the algorithm (peer.py)
        for g in exp.fleet.groups:
            plan = plan_of[g.name]
            for d in map(int, g.devices):
                idx = self.train_idx[d]
                np.savez(
                    self.edir / "devices" / f"d{d}.npz", x=ds.x_train[idx].reshape(len(idx), -1), y=ds.y_train[idx]
                )
                kf = self.edir / "keys" / f"d{d}.json"
                kf.write_text(
                    json.dumps(
                        {
                            "coordinator": self.coord.keys[d].hex(),
                            "links": {str(j): link_key(self.run_key, d, j).hex() for j in self.partners[d]},
                        }
                    )
                )
                os.chmod(kf, 0o600)
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
                        **self.firmware.get(d, {}),
                    },
                ).write(self.edir / "devices" / f"d{d}.json")

    # ---- connections --------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        device: int | None = None
        try:
            async for fr, content, total in accepted_frames(
                reader,
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

    async def _notify_down(self, d: int) -> None:
        msg = json.dumps({"cmd": "peer_down", "device": d}).encode()
        for j in self.partners[d]:
            w = self.writers.get(j)
            if w is None:
                continue
            data = self.coord.make(fm.MsgType.CONTROL, j, self.coord.round, "none", msg)
            try:
                w.write(data)
                self.control_bytes += len(data)
                self.peer_down_sent += 1
            except ConnectionError:
                pass

    def _check_done(self) -> None:
        waiting = self.reporting - set(self.dead) - self.killed
        if all(d in self.coord.metrics and (d in self.coord.updates or not self.want_models) for d in waiting):
            self.done.set()

    async def _send_control(self, d: int, r: int, msg: dict[str, Any]) -> None:
        w = self.writers.get(d)
        if w is None:
            return
        data = self.coord.make(fm.MsgType.CONTROL, d, r, "none", json.dumps(msg).encode())
        try:
            w.write(data)
            self.control_bytes += len(data)
            await w.drain()
        except ConnectionError:
            pass

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
        for dev, detail in self.coord.reject_events:
            events.append(self._event(r, dev, "frame_rejected", f"coordinator: {detail}"))
        self.coord.reject_events = []
        self._record(r, st, plan, taking, victims, events, wall0)
        if r == 1 or r % max(1, self.opt.memory_sample_every) == 0 or r == spec.rounds:
            t0 = time.perf_counter()  # after the round's wall time was taken: not part of it
            self._sample_memory()
            self.sampling_s += time.perf_counter() - t0

    def _record(
        self,
        r: int,
        st: dict[str, Any],
        plan: RoundPlan,
        taking: np.ndarray,
        victims: list[int],
        events: list[dict[str, Any]],
        wall0: float,
    ) -> None:
        exp = self.exp
        n = self.n
        reported = np.array(sorted(d for d in self.coord.metrics if d not in self.killed), dtype=np.int64)
        with_model = np.array([d for d in reported if int(d) in self.coord.updates], dtype=np.int64)
        met = {int(d): self.coord.metrics[int(d)] for d in reported}
        losses = np.full(n, np.nan)
        tx_s, rx_s = np.zeros(n), np.zeros(n)
        sent_b, recv_b, lost = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        n_sent, n_recv = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        compute_wall = np.zeros(n)
        for d, m in met.items():
            losses[d] = m.get("train_loss", np.nan)
            compute_wall[d] = float(m.get("compute_s", 0.0))
            self.local_rounds[d] = int(m.get("local_rounds", self.local_rounds[d]))
            for dst, nbytes, link_s, lost_p, ok in m.get("sent", []):
                if not ok:
                    continue
                tx_s[d] += link_s
                rx_s[int(dst)] += link_s
                sent_b[d] += int(nbytes)
                lost[d] += int(lost_p)
                n_sent[d] += 1
            for _, nbytes in m.get("received", []):
                recv_b[d] += int(nbytes)
                n_recv[d] += 1
            self.merge_timeouts += len(m.get("timeouts", []))
            self.gist_merges += int(bool(m.get("gist_merged")))
            firmware_metrics({d: m}, self.qemu_mem, self.fw_rounds)  # firmware devices: QEMU, insns
            if "merge_insns" in m:
                self.fw_merge_insns.append(int(m["merge_insns"]))
            prev = st["device_rejected"].get(d, {})  # the device reports running totals
            diff = {k: v - prev.get(k, 0) for k, v in m.get("rejected", {}).items() if v > prev.get(k, 0)}
            if diff:
                events.append(self._event(r, d, "frame_rejected", f"device {d} rejected frames: {diff}"))
            st["device_rejected"][d] = dict(m.get("rejected", {}))
        if reported.size:
            self.lr_sched.on_round_end(reported, self.local_rounds[reported], losses[reported])
        # modelled busy time and energy of the round (cost model: compute + radio, sync round)
        compute_model = np.where(np.isin(np.arange(n), reported), self.compute_s, 0.0)
        busy = compute_model + tx_s + rx_s
        round_model_s = float(busy[taking].max()) if taking.any() else 0.0
        energy = energy_joules(exp.fleet.power, compute_model, tx_s, rx_s, round_model_s, taking)
        self.energy += energy
        # evaluation and consensus of the survivors' models (the simulator's functions); the
        # models come in evaluation rounds only, so the consensus distance is recorded then
        acc, tloss, dist = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        consensus = None
        if with_model.size:
            w = torch.from_numpy(np.stack([self.coord.updates[int(d)] for d in with_model]))
            a_, l_ = evaluate_many(exp.module, exp.layout, w, self.x_test, self.y_test)
            acc[with_model], tloss[with_model] = a_.numpy(), l_.numpy()
            w64 = w.to(torch.float64)
            dd = (w64 - w64.mean(dim=0, keepdim=True)).norm(dim=1).numpy()
            dist[with_model] = dd
            consensus = float(dd.mean())
            for i, d in enumerate(with_model):
                self.models[int(d)] = w[i].numpy()
        survivors = np.zeros(n, dtype=bool)
        survivors[reported] = True
        e = plan.edges
        n_comp, _ = components(n, e[survivors[e[:, 0]] & survivors[e[:, 1]]], survivors)
        round_s = time.perf_counter() - wall0

        def status(d: int) -> str:
            if met.get(d) is not None:
                return "ok"
            return "dropped" if d in self.killed else self.dead.get(d, "timeout").split(" ")[0]

        device_rows, metric_rows, rm = round_metric_rows(
            r,
            map(int, np.flatnonzero(taking)),
            status,
            n_train=self.n_train,
            compute_s=compute_wall,
            tx_s=tx_s,
            rx_s=rx_s,
            sent_b=sent_b,
            recv_b=recv_b,
            lost=lost,
            energy=energy,
            losses=losses,
            acc=acc,
            test_loss=tloss,
            dist=dist,
            lr=self.lr_sched.lr,
            local_rounds=self.local_rounds,
            n_sent=n_sent,
            n_recv=n_recv,
            consensus=consensus,
            components=n_comp,
            messages=int(n_sent.sum()),
        )
        mean_acc = rm["acc_mean"]
        finite = losses[~np.isnan(losses)]
        st["round"] = r
        st["sim_time_s"] = st.get("sim_time_s", 0.0) + round_model_s  # the cost model's clock
        st["bytes_up"] += int(sent_b.sum())
        st["bytes_down"] += int(recv_b.sum())
        st["messages"] += int(n_sent.sum())
        st["planned_messages"] += plan.messages
        if mean_acc is not None:
            st["accuracies"].append((r, mean_acc))
        st["round_walls"].append(round_s)
        st["last_metrics"] = rm
        row = {
            "round": r,
            "sim_time_s": st["sim_time_s"],
            "duration_s": round_s,
            "selected": int(taking.sum()),
            "completed": int(reported.size),
            "dropped": len(victims),
            "stragglers": 0,
            "train_loss": float(finite.mean()) if finite.size else None,
            "test_accuracy": mean_acc,
            "test_loss": rm["loss_mean"],
            "bytes_up": int(sent_b.sum()),
            "bytes_down": int(recv_b.sum()),
            "energy_j": float(energy.sum()),
            "wall_time_s": round_s,
        }
        dfl_store.write_round(
            self.store, self.run_id, row, device_rows, events, self._checkpoint(st, row), rm, metric_rows
        )

    # ---- coordinator resume ---------------------------------------------------------------
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

    # ---- the whole run --------------------------------------------------------------------
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
            try:
                await asyncio.wait_for(self.hello[d].wait(), self.opt.start_timeout_s)
            except TimeoutError:
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
        self.startup_s = getattr(self, "startup_s", time.perf_counter() - self.t_start)
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
            np.savez(self.edir / "final_models.npz", **{f"d{d}": w for d, w in sorted(self.models.items())})
        finally:
            await self.procs.close(wait_s=10.0 if finished else 0.0)
            server.close()
            await server.wait_closed()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        st["coordinator_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return st

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


def start_dfl_emulation(
    spec: ExperimentSpec,
    spec_yaml: str,
    out: Path,
    base_dir: Path | None,
    options: EmulateOptions | None = None,
    progress: ProgressFn | None = None,
    run_dir: Path | None = None,
    on_prepared: Any = None,
    report: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Check everything, create the run folder, emulate every round, write the report."""
    options = options_as(options, DflOptions)
    check_dfl_emulatable(spec)
    if getattr(options, "netns", False):
        raise TinyTwinError(
            "emulate --netns shapes links to a server; decentralized runs use the userspace link shaper only for now"
        )
    exp = prepare(spec, base_dir)
    mlp_rows(exp)
    network = check_family(exp, base_dir)
    if on_prepared is not None:
        on_prepared(exp)
    run_dir, store, run_id = create_emulation_run(spec, spec_yaml, out, run_dir)
    dfl_store.ensure_tables(store)
    a = spec.algorithm
    n_train = np.array([len(q[: a.train_samples] if a.train_samples else q) for q in exp.parts], dtype=np.int64)
    store.add_devices(run_id, exp.device_rows(n_train))
    info = network.describe()
    store.add_events(
        run_id,
        [
            {
                "round": 0,
                "sim_time_s": 0.0,
                "device": None,
                "kind": "topology",
                "detail": f"{info['kind']} topology: {info['devices']} devices, {info['links']} links, "
                f"degree {info['degree_min']}..{info['degree_max']}, "
                f"{info['components']} connected component(s)",
            }
        ],
    )
    wall0 = time.perf_counter()
    with coordinator_run(store, run_id, run_dir, log):
        emu = DflEmulation(exp, network, store, run_id, run_dir, options)
        state = asyncio.run(emu.run(progress))
        summary = emu.summary(state, time.perf_counter() - wall0)
    return finish_peer_run(store, run_id, run_dir, summary, report)


def dfl_options_from_json(data: dict[str, Any]) -> DflOptions:
    """The options a decentralized emulation was started with (``emulate/coordinator.json``)."""
    return options_from_json(data, DflOptions)


def resume_dfl_emulation(
    run_dir: Path,
    store: RunStore,
    run_id: str,
    spec: ExperimentSpec,
    saved: dict[str, Any],
    base_dir: Path | None,
    progress: ProgressFn | None = None,
    on_prepared: Any = None,
    report: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Continue a killed decentralized emulation after its last committed round: the device
    processes (which kept their models and call the coordinator's address again for
    ``reconnect_grace_s``) reconnect and roll back to that round; see docs/emulation.md."""
    options = dfl_options_from_json(saved["options"])

    def load() -> tuple[Experiment, Network]:
        exp = prepare(spec, base_dir)
        return exp, check_family(exp, base_dir)

    (exp, network), ck = resume_prepared(store, run_id, load, on_prepared, exp_of=lambda x: x[0])
    done = ck[0] if ck else 0
    store.add_events(run_id, [resume_event(done, float(ck[1]["st"].get("sim_time_s", 0.0)) if ck else 0.0)])
    wall0 = time.perf_counter()
    with coordinator_run(store, run_id, run_dir, log):
        emu = DflEmulation(exp, network, store, run_id, run_dir, options, resume=True)
        st = emu.restore(ck[1]) if ck else emu.initial_st()
        if not ck:
            emu.offset = WIRE_STRIDE
        state = asyncio.run(emu.run(progress, st))
        summary = emu.summary(state, time.perf_counter() - wall0)
    return finish_peer_run(store, run_id, run_dir, summary, report)
