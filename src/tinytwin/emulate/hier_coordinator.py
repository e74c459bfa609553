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
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms import hierarchical as H
from tinytwin.algorithms.aggregators import weighted_mean
from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.core.preflight import check_family
from tinytwin.emulate.aggregator import AGGREGATOR_BASE, aggregator_id, aggregator_key
from tinytwin.emulate.device import OOM_EXIT
from tinytwin.emulate.device_config import DeviceConfig, memory_budget
from tinytwin.emulate.firmware_fleet import check_firmware_spec, firmware_configs, firmware_groups
from tinytwin.emulate.fork_fleet import PEERS_FILE, WIRE_STRIDE, ForkServer, proc_cpu_s
from tinytwin.emulate.frame_checks import Coordinator
from tinytwin.emulate.hier_plan import HierRoundPlan, lossless, modelled_costs, plan_round
from tinytwin.emulate.lifecycle import (
    ProgressFn,
    bind_coordinator,
    coordinator_run,
    create_emulation_run,
    load_run_key,
    resume_event,
    resume_prepared,
)
from tinytwin.emulate.model_rows import model_rows
from tinytwin.emulate.options import EmulateOptions, options_as, options_from_json
from tinytwin.emulate.outcome import finish_peer_run
from tinytwin.emulate.processes import adopt_recorded, child_env, exit_kind, note_memory
from tinytwin.emulate.run_stats import firmware_summary, kb_stats, run_stats
from tinytwin.emulate.rundir import write_json
from tinytwin.emulate.serving import accepted_frames, send_frame
from tinytwin.emulate.signals import terminate_raises
from tinytwin.emulate.skeleton import CoordinatorClock
from tinytwin.emulate.wire_np import derive_key
from tinytwin.engines.evaluate import accuracy_and_loss
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.engines.experiment import Experiment, prepare
from tinytwin.engines.hierarchical import HierarchicalSimulator, HState
from tinytwin.errors import TinyTwinError
from tinytwin.fleet.cost import take_links
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm
from tinytwin.wire.roundtrip import roundtrip_torch

__all__ = ["HierEmulation", "HierOptions", "check_hier_emulatable", "resume_hier_emulation", "start_hier_emulation"]

log = logging.getLogger("tinytwin.emulate.hier")
MiB = 2**20


@dataclass
class HierOptions(EmulateOptions):
    kill_devices: dict[int, list[int]] = field(default_factory=dict)
    """round -> devices SIGKILLed during that round's first local round (restarted at the next round)."""
    kill_aggregators: dict[int, list[int]] = field(default_factory=dict)
    """round -> clusters whose local aggregator is SIGKILLed once it has reported its first local round."""
    memory_sample_every: int = 5
    """Sample every process's RSS/PSS (and its mappings, for torch) after round 1, every this many
    rounds and the last round."""


def check_hier_emulatable(spec: ExperimentSpec) -> None:
    """Refuse, in one line, what the hierarchical emulation does not run."""
    a = spec.algorithm
    if a.aggregator.name != "fedavg":
        raise TinyTwinError(
            f"emulate: local aggregators run FedAvg (numpy); aggregator.name {a.aggregator.name!r} "
            "is simulation-only for hierarchical runs (tinytwin run)"
        )


class HierForkServer(ForkServer):
    """The decentralized twin's fork server client, with children that run
    :mod:`tinytwin.emulate.hier_procs` and may be started again after they died."""

    async def start(self, env: dict[str, str], log_path: Path) -> None:
        with open(log_path, "ab") as errf:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tinytwin.emulate.forkserver",
                "tinytwin.emulate.hier_procs",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errf,
                env=env,
            )
        self._reader = asyncio.create_task(self._read())

    async def spawn(self, d: int, cfg: Path, log_path: Path) -> int:
        self.exits.pop(d, None)
        self.adopted.pop(d, None)  # a process of a killed coordinator's fork server, replaced
        return await super().spawn(d, cfg, log_path)

    async def wait_exit(self, d: int, timeout: float = 2.0) -> None:
        if d in self.adopted:  # not our child: no exit report, watch /proc until it is gone
            deadline = time.monotonic() + timeout
            while self.alive(d) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return
        ev = self.exited.get(d)
        if ev is not None and d in self.pids:
            try:
                await asyncio.wait_for(ev.wait(), timeout)
            except TimeoutError:
                pass


def _maps_torch(pid: int) -> bool:
    """Whether a process has a torch library mapped (its /proc/PID/maps)."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return "libtorch" in fh.read()
    except OSError:
        return False


@dataclass
class _RoundState:
    """What the GA collects from the local aggregators during one global round."""

    clusters: list[int]
    local: dict[int, list[dict[str, Any]]]
    final: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    kill: set[int] = field(default_factory=set)
    killed: set[int] = field(default_factory=set)
    model_bytes: dict[int, int] = field(default_factory=dict)


class HierEmulation(CoordinatorClock):
    """One hierarchical emulated run: processes, rounds, results."""

    def __init__(
        self,
        exp: Experiment,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        options: HierOptions,
        base_dir: Path | None,
        resume: bool = False,
    ) -> None:
        self.exp, self.store, self.run_id, self.run_dir, self.opt = exp, store, run_id, run_dir, options
        # the simulator's engine object: assignment, sample counts, compute times, links, optimizer, ledger
        self.sim = HierarchicalSimulator(exp, store, run_id, None, base_dir)
        sim, a = self.sim, exp.spec.algorithm
        self.a = a
        self.n, self.k, self.L = sim.n, sim.k, sim.h.local_rounds
        self.edir = run_dir / "emulate"
        for sub in ("keys", "devices", "aggregators", "logs"):
            (self.edir / sub).mkdir(parents=True, exist_ok=True)
        self.resume = resume
        # resumed: the processes of the killed coordinator hold keys from it
        self.run_key = load_run_key(self.edir, resume)
        self.linears_rows, self.layer_rows = model_rows(exp)  # MLP rows, or a CNN's layer list (layers_np)
        # Firmware images are built (and a model too big for a board refused) before any process starts;
        # a firmware device under a local aggregator is the centralized twin's firmware device, unchanged.
        self.firmware = firmware_configs(
            exp,
            self.linears_rows or [],
            self.edir / "firmware",
            firmware_groups(exp, options.firmware_all),
            arena_override=options.firmware_arena_override,
        )
        self.qemu_mem: dict[int, dict[str, int]] = {}
        self.fw_rounds: list[tuple[int, float, float]] = []  # (insns, firmware s, cost-model s) per device-round
        p = exp.model.num_params
        self.sizes = list(exp.model.tensor_sizes)
        # the LA -> GA report: the cluster update in the spec's encoding (one cluster: the model, float32)
        self.report_enc = a.encoding if self.k > 1 else "float32"
        self.coord = Coordinator(0, self.run_key, p, self.sizes, self.report_enc)
        self.coord.keys = {aggregator_id(c): aggregator_key(self.run_key, c) for c in range(self.k)}
        self.coord.max_frame = max(self.coord.max_frame, 1 << 20)
        self.members = {c: [int(d) for d in np.flatnonzero(sim.assign == c)] for c in range(self.k)}
        by_group = {pl.group: pl for pl in exp.memory}
        self.plan_of = {int(d): by_group[g.name] for g in exp.fleet.groups for d in g.devices}
        self.procs = HierForkServer()
        self.la_writers: dict[int, asyncio.StreamWriter] = {}
        self.la_hello: dict[int, asyncio.Event] = {c: asyncio.Event() for c in range(self.k)}
        self.la_ready: dict[int, asyncio.Event] = {c: asyncio.Event() for c in range(self.k)}
        self.la_port: dict[int, int] = {}
        self.la_torch: set[int] = set()
        self.device_torch: set[int] = set()
        self.torch_mapped: set[str] = set()
        self.rs: _RoundState | None = None
        self.done = asyncio.Event()
        self.gone: set[int] = set()  # devices failed for good (failures.permanent)
        self.killed_now: set[int] = set()
        self.mem_max: dict[str, dict[str, int]] = {}
        self.total_mem_kb: dict[str, int] = {}
        self.sampling_s = 0.0
        self.devices_cpu_s = 0.0
        self.control_bytes = 0
        self.la_ga_bytes = 0
        self.la_rejected: dict[int, dict[str, int]] = {}
        self.device_rejected: dict[int, dict[str, int]] = {}
        self.rejected_retired: Counter[str] = Counter()  # counts of processes that were replaced
        self.local_rounds = np.zeros(self.n, dtype=np.int64)
        self.modelled_s = 0.0  # the cost model's clock (HState.sim_time_s after each round)
        self.wall_s = 0.0  # wall seconds of the run at the last committed round (resume: the offset)
        self.round_walls: list[float] = []
        self.cluster_failures: list[tuple[int, int, str]] = []
        self.restarts = Counter()
        self.t_start = time.perf_counter()
        # coordinator resume: the wire-round offset (k-th resume: k * WIRE_STRIDE), the wall seconds of
        # earlier coordinators, reconnects of local aggregators
        self.offset = 0
        self.wall_offset = 0.0
        self.reconnects = 0
        self.la_hello_info: dict[int, dict[str, Any]] = {}

    # ---- files -------------------------------------------------------------------------
    def _la_config(self, c: int, first: bool) -> Path:
        kf = self.edir / "keys" / f"la{c}.json"
        if first:
            kf.write_text(
                json.dumps(
                    {
                        "coordinator": self.coord.keys[aggregator_id(c)].hex(),
                        "devices": {str(d): derive_key(self.run_key, d).hex() for d in self.members[c]},
                    }
                )
            )
            os.chmod(kf, 0o600)
        a = self.a
        cfg = {
            "role": "aggregator",
            "cluster": c,
            "host": "127.0.0.1",
            "ga_port": self.port,
            "port": self.la_port.get(c, 0),
            "key_file": str(kf),
            "members": {str(d): int(self.sim.n_train[d]) for d in self.members[c]},
            "num_params": self.exp.model.num_params,
            "tensor_sizes": self.sizes,
            "encoding": a.encoding,
            "downlink_encoding": a.downlink_encoding,
            "hello_timeout_s": self.opt.start_timeout_s,
            "round_timeout_s": self.opt.round_timeout_s,
            "reconnect_grace_s": self.opt.reconnect_grace_s,
            "announce_ready": first,
        }
        path = self.edir / "aggregators" / f"la{c}.json"
        path.write_text(json.dumps(cfg))
        return path

    def _write_devices(self) -> None:
        exp, sim = self.exp, self.sim
        ds = exp.dataset
        for d in range(self.n):
            idx = sim.train_idx[d]
            np.savez(self.edir / "devices" / f"d{d}.npz", x=ds.x_train[idx].reshape(len(idx), -1), y=ds.y_train[idx])
            kf = self.edir / "keys" / f"d{d}.key"
            kf.write_bytes(derive_key(self.run_key, d))
            os.chmod(kf, 0o600)
            self._device_config(d)

    def _device_config(self, d: int) -> None:
        """The centralized twin's device config, with the address of the device's local aggregator."""
        exp, a = self.exp, self.a
        plan = self.plan_of[d]
        max_frame = max(
            fm.frame_size(enc.encoded_size(exp.model.num_params, a.downlink_encoding, tensor_sizes=self.sizes)), 4096
        )
        DeviceConfig(
            device=d,
            host="127.0.0.1",
            port=self.la_port[int(self.sim.assign[d])],
            key_file=str(self.edir / "keys" / f"d{d}.key"),
            data_file=str(self.edir / "devices" / f"d{d}.npz"),
            seed=exp.spec.seed,
            num_params=exp.model.num_params,
            tensor_sizes=self.sizes,
            train=LocalTraining.from_spec(a),
            encoding=a.encoding,
            time_scale=self.opt.time_scale,
            compute_s=float(self.sim.compute_s[d]),
            arena_bytes=int(plan.ram_needed),
            mem_budget_bytes=memory_budget(self.opt, plan.ram_available, d),
            max_frame=max_frame,
            reconnect_grace_s=self.opt.reconnect_grace_s,
            extra={
                "role": "device",
                "linears": self.linears_rows,
                "layers": self.layer_rows,
                "downlink_encoding": a.downlink_encoding,
                **self.firmware.get(d, {}),
            },
        ).write(self.edir / "devices" / f"d{d}.json")

    # ---- processes ---------------------------------------------------------------------
    def _la_key(self, c: int) -> int:
        return self.n + c  # fork-server key of local aggregator c (devices: 0..D-1)

    async def _spawn_device(self, d: int) -> None:
        await self.procs.spawn(d, self.edir / "devices" / f"d{d}.json", self.edir / "logs" / f"d{d}.log")

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

    def _exit_kind(self, key: int) -> str:
        rc = self.procs.exits.get(key)
        # a firmware device's fault file decides (its trainer removes a stale one at start); an OOM exit wins
        fw = key in self.firmware and rc != OOM_EXIT
        log_file = self.edir / "logs" / (f"d{key}.log" if key < self.n else f"la{key - self.n}.log")
        return exit_kind(
            rc,
            killed=rc == -9,
            workdir=Path(self.firmware[key]["firmware"]["workdir"]) if fw else None,
            log_file=log_file,
        )

    # ---- the GA's connections ------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cluster: int | None = None
        wid: int | None = None
        try:
            async for fr, content, total in accepted_frames(
                reader, self.coord, lambda: wid, reject_device=lambda: None
            ):
                if fr.msg_type == fm.MsgType.HELLO:
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

    def _delivered(self, c: int) -> bool:
        rs = self.rs
        return rs is not None and c in rs.final and aggregator_id(c) in self.coord.updates

    def _check_done(self) -> None:
        if all(self._delivered(w - AGGREGATOR_BASE) for w in self.coord.expect):
            self.done.set()

    async def _send_la(self, c: int, data: bytes) -> bool:
        return await send_frame(self.la_writers.get(c), data)

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

    async def _round(self, r: int, st: HState) -> HState:
        exp, sim, a, spec = self.exp, self.sim, self.a, self.exp.spec
        n, L = self.n, self.L
        wall0 = time.perf_counter()
        events: list[dict[str, Any]] = []
        changes = exp.timeline.changes(r)
        for d, kind in changes:
            events.append(self._event(r, d, kind, f"device {d} {kind}"))
        online = exp.timeline.online(r)
        ids = np.flatnonzero(online)
        failing = {d for d, kind in changes if kind == "failure" and d not in self.gone}
        kill_now = {int(d) for d in self.opt.kill_devices.get(r, []) if online[int(d)]}
        victims = failing | kill_now
        taking = sorted(set(map(int, ids)) | failing)
        taking_mask = np.zeros(n, dtype=bool)
        taking_mask[taking] = True
        clusters = sorted({int(sim.assign[d]) for d in taking})
        # restart what died earlier: local aggregators of clusters taking part, then their devices
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
        plan = plan_round(exp.fleet.links, sim.la_links, sim.assign, spec.seed, r, L, ids, sim.up_bytes, sim.down_bytes)
        extra_down = {}
        for d in sorted(failing - set(map(int, ids))):
            lk = take_links(exp.fleet.links, np.array([d]))
            extra_down[d] = float(lossless(sim.down_bytes, lk.down_bps, lk).time_s[0])
        self._write_peers()
        self.coord.round = r + self.offset
        self.coord.updates, self.coord.update_bytes, self.coord.metrics = {}, {}, {}
        rs = _RoundState(
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

    def _record(
        self,
        r: int,
        st: HState,
        plan: HierRoundPlan,
        rs: _RoundState,
        taking: list[int],
        taking_mask: np.ndarray,
        victims: set[int],
        failing: set[int],
        extra_down: dict[int, float],
        events: list[dict[str, Any]],
        wall0: float,
    ) -> HState:
        exp, sim, a, spec = self.exp, self.sim, self.a, self.exp.spec
        n, k, L = self.n, self.k, self.L
        g = st.global_params
        for c, why in sorted(rs.failed.items()):
            self.cluster_failures.append((r, c, why))
            events.append(
                self._event(
                    r,
                    None,
                    "aggregator_killed" if why == "killed" else "cluster_failed",
                    f"local aggregator {c}: {why}; cluster {c} ({len(rs.local.get(c, []))} of "
                    f"{L} local rounds reported) left out of round {r}",
                )
            )
        reporting = [
            c for c in rs.clusters if c not in rs.failed and self._delivered(c) and rs.final[c].get("contributed")
        ]
        # per device: what the local aggregators reported, local round by local round
        got_model: list[set[int]] = [set() for _ in range(L)]
        done: list[set[int]] = [set() for _ in range(L)]
        status: dict[int, str] = {}
        losses = np.full(n, np.nan)
        b_up, b_down = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        sent, recv = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        for c in rs.clusters:
            for rep in rs.local.get(c, []):
                li = int(rep["local"]) - 1
                for ds, m in rep["devices"].items():
                    d = int(ds)
                    if m.get("got_model"):
                        got_model[li].add(d)
                        recv[d] += 1
                    b_down[d] += int(m.get("bytes_down", 0))
                    b_up[d] += int(m.get("bytes_up", 0))
                    if m["status"] == "ok":
                        done[li].add(d)
                        sent[d] += 1
                        if m.get("train_loss") is not None:
                            losses[d] = float(m["train_loss"])
                        if m.get("insns") is not None:  # a firmware device: its board's figures
                            self.fw_rounds.append(
                                (int(m["insns"]), float(m["firmware_compute_s"]), float(m["cost_model_compute_s"]))
                            )
                        if m.get("qemu_rss_kb") is not None:
                            cur = self.qemu_mem.setdefault(d, {})
                            for x in ("qemu_rss_kb", "qemu_pss_kb"):
                                cur[x] = max(cur.get(x, 0), int(m.get(x) or 0))
                    elif d not in status:
                        status[d] = m["status"]
                    rej = m.get("rejected") or {}
                    prev = self.device_rejected.get(d, {})
                    diff = {x: v - prev.get(x, 0) for x, v in rej.items() if v > prev.get(x, 0)}
                    if diff:
                        events.append(self._event(r, d, "frame_rejected", f"device {d} rejected frames: {diff}"))
                    if rej:
                        self.device_rejected[d] = dict(rej)
                rej = rep.get("rejected") or {}
                prev = self.la_rejected.get(c, {})
                diff = {x: v - prev.get(x, 0) for x, v in rej.items() if v > prev.get(x, 0)}
                if diff:
                    events.append(
                        self._event(r, None, "frame_rejected", f"local aggregator {c} rejected frames: {diff}")
                    )
                self.la_rejected[c] = dict(rej)
        for d in taking:
            c = int(sim.assign[d])
            if c in rs.failed:
                status[d] = "la_failed"
            elif d in victims:
                status[d] = "dropped"
            elif d not in status:
                status[d] = "ok"
            elif status[d] in ("disconnected", "failed"):
                why = self._exit_kind(d)
                status[d] = why.split(" ")[0]  # oom, crash, firmware_fault (the detail goes to the event)
                if status[d] != "killed":
                    events.append(self._event(r, d, status[d], f"device {d}: {why}"))
            elif status[d] in ("timeout", "no_hello"):
                events.append(self._event(r, d, status[d], f"device {d}: {status[d]}"))
        for c in rs.clusters:  # a new aggregator process counts from zero again
            if c in rs.failed:
                self.rejected_retired.update(self.la_rejected.pop(c, {}))
        mr = modelled_costs(
            plan,
            n,
            sim.assign,
            sim.compute_s,
            exp.fleet.power,
            got_model,
            done,
            set(reporting),
            k,
            taking_mask,
            extra_down,
        )
        # the global aggregate, as the engine: sample-weighted mean of the decoded cluster updates
        cluster_models: dict[int, torch.Tensor] = {}
        for c in reporting:
            v = torch.from_numpy(np.asarray(self.coord.updates[aggregator_id(c)]))
            cluster_models[c] = v if k == 1 else g + v
        if k == 1 and reporting:
            proposal = cluster_models[0]
        elif reporting:
            cw = torch.tensor([float(sim.n_train[rs.final[c]["contributed"]].sum()) for c in reporting], dtype=g.dtype)
            deltas = torch.from_numpy(np.stack([np.asarray(self.coord.updates[aggregator_id(c)]) for c in reporting]))
            proposal = g + weighted_mean(deltas, cw)
        else:
            proposal = g
            events.append(self._event(r, None, "empty_round", "no cluster reported; the global model is unchanged"))
        new_global, server_state = (
            sim.server_opt.step(g, proposal, st.server_state) if reporting else (g, st.server_state)
        )
        if a.downlink_encoding != "float32":
            new_global = roundtrip_torch(new_global[None], a.downlink_encoding, tensor_sizes=exp.model.tensor_sizes)[0]
        # evaluation: the global model, and every reporting cluster's model (what its devices hold)
        acc = loss = gacc = None
        dev_acc = np.full(n, np.nan)
        if r % spec.evaluation.every == 0 or r == spec.rounds:
            acc, loss = accuracy_and_loss(exp.module, exp.layout, new_global, sim.x_test, sim.y_test)
            gacc = acc
            if k > 1 and reporting:
                ca, _ = evaluate_many(
                    exp.module, exp.layout, torch.stack([cluster_models[c] for c in reporting]), sim.x_test, sim.y_test
                )
                by_c = dict(zip(reporting, ca.numpy().tolist()))
                for d in taking:
                    if int(sim.assign[d]) in by_c:
                        dev_acc[d] = by_c[int(sim.assign[d])]
            else:
                dev_acc[[d for d in taking if int(sim.assign[d]) in reporting]] = gacc
        ev = dev_acc[~np.isnan(dev_acc)]
        w = torch.stack([cluster_models[c] for c in reporting]).to(torch.float64) if reporting else None
        consensus = float((w - w.mean(0, keepdim=True)).norm(dim=1).mean()) if w is not None else None
        participants = np.array(sorted(set().union(*done)), dtype=np.int64)
        ledger = [
            row
            for row in H.round_ledger(sim.assign, sim.client_costs, sim.agg_costs, sim.model_mb, L, participants)
            if row["level"] != "la-ga" or int(row["src"].split()[1]) in reporting
        ]
        for row in ledger:
            row["round"] = r
            row["bytes"] = int(round(row.pop("mb") * H.MB))
        cost = float(sum(row["cost"] for row in ledger))
        la_up_b = sum(int(self.coord.update_bytes.get(aggregator_id(c), 0)) for c in reporting)
        la_down_b = sum(rs.model_bytes.values())
        self.la_ga_bytes += la_up_b + la_down_b
        messages = int(recv.sum() + sent.sum()) + len(rs.model_bytes) + len(reporting)
        rm = {
            "round": r,
            "acc_mean": float(ev.mean()) if ev.size else None,
            "acc_min": float(ev.min()) if ev.size else None,
            "acc_max": float(ev.max()) if ev.size else None,
            "acc_std": float(ev.std()) if ev.size else None,
            "loss_mean": loss,
            "consensus_distance": consensus,
            "global_accuracy": gacc,
            "components": len(reporting),
            "messages": messages,
        }
        device_rows, metric_rows = [], []
        for d in taking:
            self.local_rounds[d] += sent[d]
            device_rows.append(
                {
                    "round": r,
                    "device": d,
                    "status": status[d],
                    "num_samples": int(sim.n_train[d]),
                    "compute_s": float(mr.compute_s[d]),
                    "up_s": float(mr.up_s[d]),
                    "down_s": float(mr.down_s[d]),
                    "bytes_up": int(b_up[d]),
                    "bytes_down": int(b_down[d]),
                    "packets_lost": int(mr.lost[d]),
                    "energy_j": float(mr.energy_j[d]),
                    "train_loss": None if np.isnan(losses[d]) else float(losses[d]),
                    "accuracy": None,
                }
            )
            metric_rows.append(
                {
                    "round": r,
                    "device": d,
                    "test_accuracy": None if np.isnan(dev_acc[d]) else float(dev_acc[d]),
                    "test_loss": None,
                    "distance_to_mean": None,
                    "lr": float(a.lr),
                    "local_rounds": int(self.local_rounds[d]),
                    "messages_sent": int(sent[d]),
                    "messages_received": int(recv[d]),
                    "airtime_s": float(mr.up_s[d] + mr.down_s[d]),
                }
            )
        for dev, detail in self.coord.reject_events:
            events.append(self._event(r, dev, "frame_rejected", f"global coordinator: {detail}"))
        self.coord.reject_events = []
        bytes_up = int(b_up.sum()) + (la_up_b if k > 1 else 0)
        bytes_down = int(b_down.sum()) + (la_down_b if k > 1 else 0)
        finite = losses[~np.isnan(losses)]
        round_s = time.perf_counter() - wall0
        self.round_walls.append(round_s)
        self.modelled_s += mr.round_s
        self.wall_s = self._wall()
        new = HState(
            r,
            new_global,
            server_state,
            st.sim_time_s + mr.round_s,
            st.energy_j + mr.energy_j,
            st.bytes_up + bytes_up,
            st.bytes_down + bytes_down,
            st.cost_spent + cost,
            st.accuracies + ([(r, acc)] if acc is not None else []),
            rm,
        )
        row = {
            "round": r,
            "sim_time_s": new.sim_time_s,
            "duration_s": round_s,
            "selected": len(taking),
            "completed": sum(1 for d in taking if status[d] == "ok"),
            "dropped": len(victims),
            "stragglers": 0,
            "train_loss": float(finite.mean()) if finite.size else None,
            "test_accuracy": acc,
            "test_loss": loss,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "energy_j": float(mr.energy_j.sum()),
            "wall_time_s": round_s,
        }
        self.final_models = {
            "global": new_global.numpy().copy(),
            **{f"la{c}": m.numpy().copy() for c, m in cluster_models.items()},
        }
        dfl_store.write_round(
            self.store, self.run_id, row, device_rows, events, self._checkpoint(new), rm, metric_rows, ledger
        )
        self.rs = None
        return new

    # ---- coordinator resume ---------------------------------------------------------------
    _COUNTERS = (
        "gone",
        "local_rounds",
        "modelled_s",
        "wall_s",
        "round_walls",
        "cluster_failures",
        "restarts",
        "control_bytes",
        "la_ga_bytes",
        "la_rejected",
        "device_rejected",
        "rejected_retired",
        "mem_max",
        "total_mem_kb",
        "la_torch",
        "device_torch",
        "torch_mapped",
        "fw_rounds",
        "qemu_mem",
        "devices_cpu_s",
        "sampling_s",
        "la_port",
        "reconnects",
        "final_models",
    )

    def _checkpoint(self, st: HState) -> dict[str, Any]:
        """What the GA holds after a committed round (the local aggregators start every global round
        from the global model, the devices from their aggregator's model: they hold nothing to keep)."""
        return {
            "st": st.to_checkpoint(),
            "offset": self.offset,
            "startup_s": getattr(self, "startup_s", None),
            "counters": {x: getattr(self, x) for x in self._COUNTERS},
        }

    def restore(self, ck: dict[str, Any]) -> HState:
        """The GA's state after the checkpoint's round (the next wire offset); returns the run's state."""
        st = self.sim.state_from_checkpoint(ck["st"])
        self.offset = int(ck["offset"]) + WIRE_STRIDE
        self.startup_s = ck.get("startup_s")
        for x, v in ck["counters"].items():
            setattr(self, x, v)
        self.wall_offset = float(self.wall_s)
        return st

    def _write_peers(self) -> None:
        """``emulate/peers.json``: the fork server's pid and every LA's and device's (a resumed GA adopts them)."""
        if self.procs.proc is None:
            return
        pids = dict(self.procs.pids)
        write_json(
            self.edir / PEERS_FILE,
            {
                "forkserver": self.procs.proc.pid,
                "devices": {str(d): pid for d, pid in pids.items() if d < self.n},
                "aggregators": {str(key - self.n): pid for key, pid in pids.items() if key >= self.n},
                # adopted processes are children of an earlier coordinator's fork server
                "parents": {str(key): parent for key, parent in self.procs.adopted.items()},
            },
        )

    async def _resume_processes(self, st: HState) -> None:
        """Adopt the local aggregators and devices the killed GA's fork server left running, wait until
        the aggregators call again (each finishes the global round it was in first), and record who
        came back; what did not is started again by the next round."""
        R = st.round
        adopt_recorded(self.procs.adopt, self.edir / PEERS_FILE, skip=self.gone, aggregator_key=self._la_key)
        adopted_las = [c for c in range(self.k) if self._la_key(c) in self.procs.adopted]
        wait = self.opt.start_timeout_s + (self.L + 1) * self.opt.round_timeout_s

        async def hello(c: int) -> None:
            try:
                await asyncio.wait_for(self.la_hello[c].wait(), wait)
            except TimeoutError:
                pass

        await asyncio.gather(*(hello(c) for c in adopted_las))
        events: list[dict[str, Any]] = []
        devices_back = 0
        for c in range(self.k):
            info = self.la_hello_info.get(c)
            if c in self.la_writers and info is not None:
                self.reconnects += 1
                connected = [int(d) for d in info.get("connected", [])]
                back = [d for d in connected if d in self.procs.adopted and self.procs.alive(d)]
                devices_back += len(back)
                events.append(
                    self._event(
                        R,
                        None,
                        "reconnect",
                        f"local aggregator {c} (pid {info.get('pid')}) reconnected; "
                        f"{len(back)} of its {len(self.members[c])} devices still connected to it",
                    )
                )
                for d in back:
                    events.append(
                        self._event(
                            R, d, "reconnect", f"device {d} kept its connection to local aggregator {c}; adopted"
                        )
                    )
            else:
                self.procs.kill(self._la_key(c))  # started again (same port) by the next round
        alive = [d for d in range(self.n) if d not in self.gone and self.procs.alive(d)]
        events.append(
            self._event(
                R,
                None,
                "devices_resumed",
                f"{sum(1 for c in range(self.k) if c in self.la_writers)} of {self.k} local "
                f"aggregator(s) and {devices_back} of {self.n - len(self.gone)} device process(es) "
                f"of the killed coordinator reconnected; {len(alive)} device process(es) adopted; "
                f"continuing after round {R}",
            )
        )
        self.store.add_events(self.run_id, events)

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
            if _maps_torch(pid):
                self.torch_mapped.add(name)
        for name, pid in (
            ("coordinator", os.getpid()),
            ("forkserver", self.procs.proc.pid if self.procs.proc is not None else -1),
        ):
            note_memory(self.mem_max, total, name, pid)
            if name == "forkserver" and _maps_torch(pid):
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
        for d in range(self.n):
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
        spec = self.exp.spec
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
        resumed = st is not None
        finished = False
        try:
            await self.procs.start(child_env(), self.edir / "logs" / "forkserver.log")
            if resumed:
                await self._resume_processes(st)
        except BaseException:
            await self.procs.close(wait_s=0.0)
            server.close()
            await server.wait_closed()
            raise
        if not resumed:
            st = self.sim.initial_state()
        try:
            if not resumed:
                await self._start_processes()
            for r in range(st.round + 1, spec.rounds + 1):
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
            np.savez(self.edir / "final_models.npz", **getattr(self, "final_models", {}))
        finally:
            await self.procs.close(wait_s=10.0 if finished else 0.0)
            server.close()
            await server.wait_closed()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        self.coordinator_cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return st

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


def start_hier_emulation(
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
    options = options_as(options, HierOptions)
    check_hier_emulatable(spec)
    if options.netns:
        raise TinyTwinError("emulate --netns: hierarchical runs use the userspace link shaper only for now")
    exp = prepare(spec, base_dir)
    model_rows(exp)  # MLPs and the zoo's CNNs (numpy devices)
    if firmware_groups(exp, options.firmware_all):
        check_firmware_spec(exp)  # e.g. a CNN on firmware devices: refused before the run folder exists
    check_family(exp, base_dir)  # aggregator_link
    bad = [d for ds in options.kill_devices.values() for d in ds if not 0 <= int(d) < exp.fleet.num_devices]
    bad += [
        c
        for cs in options.kill_aggregators.values()
        for c in cs
        if not 0
        <= int(c)
        < (len(spec.algorithm.hierarchical.clusters or []) or spec.algorithm.hierarchical.num_clusters)
    ]
    if bad:
        raise TinyTwinError(f"emulate: kill_devices / kill_aggregators name {bad[0]}, which is not in the run")
    if on_prepared is not None:
        on_prepared(exp)
    run_dir, store, run_id = create_emulation_run(spec, spec_yaml, out, run_dir)
    wall0 = time.perf_counter()
    with coordinator_run(store, run_id, run_dir, log, logging.getLogger("tinytwin.emulate")), terminate_raises():
        emu = HierEmulation(exp, store, run_id, run_dir, options, base_dir)
        emu.sim.register()  # devices and the clusters event, as the simulator writes them
        state = asyncio.run(emu.run(progress))
        summary = emu.summary(state, time.perf_counter() - wall0)
    return finish_peer_run(store, run_id, run_dir, summary, report)


def hier_options_from_json(data: dict[str, Any]) -> HierOptions:
    """The options a hierarchical emulation was started with (``emulate/coordinator.json``)."""
    return options_from_json(data, HierOptions, int_lists=("kill_devices", "kill_aggregators"))


def resume_hier_emulation(
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
    """Continue a killed hierarchical emulation after its last committed round R: the local
    aggregators (which kept their devices and call the GA's address again for
    ``reconnect_grace_s``) reconnect and are adopted, and rounds R + 1 .. are replayed with a
    wire-round offset; see docs/emulation.md."""
    options = hier_options_from_json(saved["options"])

    def load() -> Experiment:
        exp = prepare(spec, base_dir)
        model_rows(exp)
        return exp

    exp, ck = resume_prepared(store, run_id, load, on_prepared)
    done = ck[0] if ck else 0
    wall0 = time.perf_counter()
    with coordinator_run(store, run_id, run_dir, log, logging.getLogger("tinytwin.emulate")), terminate_raises():
        emu = HierEmulation(exp, store, run_id, run_dir, options, base_dir, resume=True)
        st = emu.restore(ck[1]) if ck else emu.sim.initial_state()
        if not ck:
            emu.offset = WIRE_STRIDE
        store.add_events(run_id, [resume_event(done, emu.modelled_s)])
        state = asyncio.run(emu.run(progress, st))
        summary = emu.summary(state, time.perf_counter() - wall0)
    return finish_peer_run(store, run_id, run_dir, summary, report)
