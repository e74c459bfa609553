"""The emulation twin's coordinator: an asyncio TCP server that runs centralized FedAvg
with one real OS process per device (:mod:`tinytwin.emulate.device`).

Per round it does what :class:`tinytwin.engines.simulate.Simulator` does — same client
selection, same dropout draws, same aggregators and server optimizer — but the devices
train in their own processes, every message is an authenticated frame on a TCP
connection paced by the userspace link shaper, a dropout is a real ``SIGKILL`` of the
device process during the round, and time is the wall clock. Results go to the same
SQLite schema (``twin = 'emulate'``) and the same report. See docs/emulation.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tinytwin import __version__
from tinytwin.algorithms.aggregators import aggregate
from tinytwin.algorithms.server_optimizers import make_server_optimizer
from tinytwin.emulate import mlp_np, shaper
from tinytwin.emulate.device import OOM_EXIT
from tinytwin.emulate.wire_np import COORDINATOR_ID, Rejected, derive_key
from tinytwin.engines.batched_mlp import BatchedMLPGrad
from tinytwin.engines.experiment import Experiment, prepare
from tinytwin.engines.runner import DB_NAME, new_run_dir
from tinytwin.engines.simulate import select_participants
from tinytwin.errors import TinyTwinError
from tinytwin.fleet.cost import compute_flops
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store.db import RunStore
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm
from tinytwin.wire.roundtrip import roundtrip_torch

log = logging.getLogger("tinytwin.emulate")
ProgressFn = Callable[[int, dict[str, Any]], None]
MiB = 2**20


@dataclass
class EmulateOptions:
    time_scale: float = 0.01
    """Wall seconds per modelled second for link and compute pacing (0: no pacing)."""
    round_timeout_s: float = 120.0
    """How long the coordinator waits for the survivors' updates (plus the paced times)."""
    start_timeout_s: float = 60.0
    mem_slack_bytes: int = 16 * MiB
    """Added to the profile's training RAM for numpy temporaries (see docs/emulation.md)."""
    mem_budget_override: dict[int, int] = field(default_factory=dict)
    """device -> bytes above the process's baseline, replacing the computed budget."""


def _linears(exp: Experiment) -> list[list[Any]]:
    fast = BatchedMLPGrad.for_layers(exp.model.layers)
    if fast is None:
        raise TinyTwinError(f"emulate supports MLP models only for now (numpy device runtime); "
                            f"{exp.model.name} has other layers")
    return [[l.w_offset, l.b_offset, l.n_in, l.n_out, l.relu_after] for l in fast.linears]


def check_emulatable(spec: ExperimentSpec) -> None:
    a = spec.algorithm
    if a.family != "centralized":
        raise TinyTwinError(f"emulate runs centralized FL only for now; algorithm.family is {a.family!r}")
    if a.encoding == "bitmap" or a.downlink_encoding == "bitmap":
        raise TinyTwinError("emulate: the bitmap encoding is not supported for centralized updates")


def proc_memory_kb(pid: int) -> dict[str, int]:
    """Rss and Pss (kB) of a process from /proc/PID/smaps_rollup (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in ("Rss", "Pss", "Private_Dirty", "Shared_Clean"):
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


class Coordinator:
    """Protocol state and frame checks of the coordinator (usable without sockets)."""

    def __init__(self, num_devices: int, run_key: bytes, num_params: int, tensor_sizes: list[int],
                 encoding: str) -> None:
        self.keys = {d: derive_key(run_key, d) for d in range(num_devices)}
        self.guard = fm.ReplayGuard()
        self.nonce = time.time_ns()
        self.n = num_params
        self.tensor_sizes = tensor_sizes
        self.encoding = encoding
        self.round = 0
        self.expect: set[int] = set()
        self.updates: dict[int, np.ndarray] = {}
        self.update_bytes: dict[int, int] = {}
        self.metrics: dict[int, dict[str, Any]] = {}
        self.rejected: Counter[str] = Counter()
        self.reject_events: list[tuple[int | None, str]] = []
        self.max_frame = max(fm.frame_size(enc.encoded_size(num_params, encoding, tensor_sizes=tensor_sizes)),
                             64 * 1024)

    def key_for(self, sender: int) -> bytes | None:
        return self.keys.get(sender)

    def make(self, msg_type: int, receiver: int, round_: int, encoding: str, payload: bytes) -> bytes:
        self.nonce += 1
        return fm.encode_frame(fm.Frame(msg_type, COORDINATOR_ID, receiver, round_, encoding, 0, self.nonce,
                                        payload), self.keys[receiver])

    def accept(self, data: bytes, conn_device: int | None = None) -> tuple[fm.Frame, Any]:
        """Check one complete frame; return ``(frame, content)`` or raise :class:`Rejected`.

        Changes no state except the replay guard (and only for authentic frames).
        """
        try:
            fr = fm.decode_frame(data, self.key_for)
            self.guard.check(fr.sender, fr.nonce)
        except fm.FrameError as exc:
            raise Rejected(exc.reason, exc.detail) from None
        if conn_device is not None and fr.sender != conn_device:
            raise Rejected("wrong_sender", f"sender {fr.sender} on device {conn_device}'s connection")
        if fr.receiver != COORDINATOR_ID:
            raise Rejected("wrong_receiver", f"frame for {fr.receiver}")
        t = fr.msg_type
        if conn_device is None and t != fm.MsgType.HELLO:
            raise Rejected("no_hello", f"{t.name} on a connection that has not said HELLO")
        if t in (fm.MsgType.HELLO, fm.MsgType.METRICS, fm.MsgType.BYE):
            try:
                content = json.loads(fr.payload.decode()) if fr.payload else {}
                if not isinstance(content, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                raise Rejected("bad_payload", str(exc)) from None
            if t == fm.MsgType.METRICS and (fr.round != self.round or fr.sender not in self.expect):
                raise Rejected("stale_round", f"metrics for round {fr.round} from {fr.sender}")
            return fr, content
        if t == fm.MsgType.UPDATE:
            if fr.round != self.round:
                raise Rejected("stale_round", f"update for round {fr.round}, current {self.round}")
            if fr.sender not in self.expect or fr.sender in self.updates:
                raise Rejected("not_expected", f"no update expected from {fr.sender} in round {fr.round}")
            if fr.encoding != self.encoding:
                raise Rejected("bad_payload", f"encoding {fr.encoding}, expected {self.encoding}")
            try:
                values, _ = enc.decode(fr.payload, fr.encoding, self.n, tensor_sizes=self.tensor_sizes)
            except ValueError as exc:
                raise Rejected("bad_payload", str(exc)) from None
            if not fm.payload_is_finite(values):
                raise Rejected("non_finite", "update contains NaN or Inf")
            return fr, values
        raise Rejected("unexpected_type", f"{t.name} is not sent to the coordinator")

    def handle(self, data: bytes, conn_device: int | None = None) -> tuple[fm.Frame, Any] | None:
        try:
            return self.accept(data, conn_device)
        except Rejected as exc:
            self.rejected[exc.reason] += 1
            self.reject_events.append((conn_device, f"{exc.reason}: {exc.detail}"))
            log.warning("rejected frame (connection of device %s): %s", conn_device, exc)
            return None


class Emulation:
    """One emulated run: spawns the device processes, serves them, drives the rounds."""

    def __init__(self, exp: Experiment, store: RunStore, run_id: str, run_dir: Path,
                 options: EmulateOptions) -> None:
        self.exp, self.store, self.run_id, self.run_dir, self.opt = exp, store, run_id, run_dir, options
        a = exp.spec.algorithm
        self.n_dev = exp.fleet.num_devices
        self.edir = run_dir / "emulate"
        (self.edir / "keys").mkdir(parents=True, exist_ok=True)
        (self.edir / "devices").mkdir(exist_ok=True)
        (self.edir / "logs").mkdir(exist_ok=True)
        self.run_key = secrets.token_bytes(32)
        key_file = self.edir / "run.key"
        key_file.write_bytes(self.run_key)
        os.chmod(key_file, 0o600)
        self.linears_rows = _linears(exp)
        self.linears = mlp_np.linears_from(self.linears_rows)
        self.coord = Coordinator(self.n_dev, self.run_key, exp.model.num_params, list(exp.model.tensor_sizes),
                                 a.encoding)
        so = a.server_optimizer
        self.server_opt = make_server_optimizer(so.name, lr=so.lr, momentum=so.momentum, beta1=so.beta1,
                                                beta2=so.beta2, tau=so.tau)
        L = exp.fleet.links
        self.links = [shaper.Link(float(L.latency_s[d]), float(L.up_bps[d]), float(L.down_bps[d]), float(L.loss[d]),
                                  int(L.mtu_bytes[d]), int(L.header_bytes[d])) for d in range(self.n_dev)]
        flops = compute_flops(exp.num_samples, a.local_epochs, a.batch_size, exp.flops_per_sample, exp.flops_per_step)
        self.compute_s = flops / exp.fleet.flops_per_s
        self.x_test = exp.dataset.x_test.reshape(len(exp.dataset.x_test), -1).astype(np.float32)
        self.y_test = exp.dataset.y_test.astype(np.int64)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.hello: dict[int, asyncio.Event] = {}
        self.failed: dict[int, str] = {}     # device -> failure kind in the current round
        self.killed: set[int] = set()
        self.mem_max: dict[int, dict[str, int]] = {}
        self.spawns = Counter[int]()
        self.done = asyncio.Event()
        self.port = 0
        self.control_bytes = 0
        self.torch_devices: set[int] = set()

    # ---- device processes ----------------------------------------------------------
    def _write_device_files(self) -> None:
        exp, a = self.exp, self.exp.spec.algorithm
        ds = exp.dataset
        plan_of = {p.group: p for p in exp.memory}
        for g in exp.fleet.groups:
            plan = plan_of[g.name]
            for d in g.devices:
                d = int(d)
                np.savez(self.edir / "devices" / f"d{d}.npz", x=ds.x_train[exp.parts[d]].reshape(len(exp.parts[d]), -1),
                         y=ds.y_train[exp.parts[d]])
                kf = self.edir / "keys" / f"d{d}.key"
                kf.write_bytes(self.coord.keys[d])
                os.chmod(kf, 0o600)
                budget = self.opt.mem_budget_override.get(d, plan.ram_available + self.opt.mem_slack_bytes)
                cfg = {
                    "device": d, "host": "127.0.0.1", "port": self.port, "key_file": str(kf),
                    "data_file": str(self.edir / "devices" / f"d{d}.npz"), "seed": exp.spec.seed,
                    "linears": self.linears_rows, "num_params": exp.model.num_params,
                    "tensor_sizes": list(exp.model.tensor_sizes),
                    "train": {"epochs": a.local_epochs, "batch_size": a.batch_size, "lr": a.lr,
                              "optimizer": a.optimizer, "momentum": a.momentum, "weight_decay": a.weight_decay,
                              "prox_mu": a.prox_mu},
                    "encoding": a.encoding, "downlink_encoding": a.downlink_encoding,
                    "link": self.links[d].__dict__, "time_scale": self.opt.time_scale,
                    "compute_s": float(self.compute_s[d]), "arena_bytes": int(plan.ram_needed),
                    "mem_budget_bytes": int(budget),
                    "max_frame": max(fm.frame_size(enc.encoded_size(exp.model.num_params, a.downlink_encoding,
                                                                    tensor_sizes=exp.model.tensor_sizes)), 4096),
                }
                (self.edir / "devices" / f"d{d}.json").write_text(json.dumps(cfg))

    def _spawn(self, d: int) -> None:
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.hello[d] = asyncio.Event()
        self.spawns[d] += 1
        errf = open(self.edir / "logs" / f"d{d}.log", "ab")
        self.procs[d] = subprocess.Popen(
            [sys.executable, "-m", "tinytwin.emulate.device", str(self.edir / "devices" / f"d{d}.json")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf, env=env, close_fds=True)
        errf.close()

    async def _await_hellos(self, devices: list[int], events: list[dict[str, Any]], r: int) -> None:
        async def one(d: int) -> None:
            try:
                await asyncio.wait_for(self.hello[d].wait(), self.opt.start_timeout_s)
            except asyncio.TimeoutError:
                self.failed[d] = "no_hello"
                events.append(self._event(r, d, "no_hello", f"device {d} did not say HELLO in "
                                                            f"{self.opt.start_timeout_s} s"))
        await asyncio.gather(*(one(d) for d in devices))

    def _alive(self, d: int) -> bool:
        p = self.procs.get(d)
        return p is not None and p.poll() is None and d in self.writers

    async def _exit_kind(self, d: int) -> str:
        p = self.procs.get(d)
        if p is None:
            return "crash"
        for _ in range(200):
            if p.poll() is not None:
                break
            await asyncio.sleep(0.01)
        rc = p.poll()
        if d in self.killed:
            return "killed"
        if rc == OOM_EXIT:
            return "oom"
        return "disconnected" if rc is None else f"crash (exit {rc})"

    # ---- connections ----------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        device: int | None = None
        try:
            while True:
                try:
                    header = await reader.readexactly(fm.HEADER_SIZE)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                try:
                    total = fm.frame_length(header)
                    if total > self.coord.max_frame:
                        raise Rejected("oversized", f"frame of {total} bytes > {self.coord.max_frame}")
                except (fm.FrameError, Rejected) as exc:
                    self.coord.rejected[exc.reason] += 1
                    self.coord.reject_events.append((device, f"{exc.reason} (header); connection closed"))
                    log.warning("rejected frame header from device %s: %s; closing", device, exc)
                    break
                try:
                    rest = await asyncio.wait_for(reader.readexactly(total - fm.HEADER_SIZE), 60)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    self.coord.rejected["truncated"] += 1
                    self.coord.reject_events.append((device, "truncated: stream ended inside a frame"))
                    break
                got = self.coord.handle(header + rest, device)
                if got is None:
                    continue
                fr, content = got
                if fr.msg_type == fm.MsgType.HELLO:
                    device = fr.sender
                    self.writers[device] = writer
                    self.control_bytes += total
                    if device in self.hello:
                        self.hello[device].set()
                elif fr.msg_type == fm.MsgType.METRICS:
                    self.coord.metrics[fr.sender] = content
                    if content.get("torch_loaded"):
                        self.torch_devices.add(fr.sender)
                    self.control_bytes += total
                elif fr.msg_type == fm.MsgType.UPDATE:
                    if fr.sender in self.killed:
                        continue
                    self.coord.updates[fr.sender] = content
                    self.coord.update_bytes[fr.sender] = total
                    self._check_done()
        finally:
            if device is not None and self.writers.get(device) is writer:
                del self.writers[device]
                if device in self.coord.expect and device not in self.coord.updates:
                    self.failed[device] = await self._exit_kind(device)
                    self.coord.expect.discard(device)
                    self._check_done()
            writer.close()

    def _check_done(self) -> None:
        if self.coord.expect <= set(self.coord.updates):
            self.done.set()

    async def _send_model(self, d: int, r: int, payload: bytes, victim: bool) -> tuple[int, float, int]:
        """Shaped send of the global model; returns (frame bytes, down seconds, lost packets)."""
        t0 = time.perf_counter()
        data = self.coord.make(fm.MsgType.MODEL, d, r, self.exp.spec.algorithm.downlink_encoding, payload)
        link = self.links[d]
        lost = shaper.draw_lost(stream_rng(self.exp.spec.seed, Stream.LINK_LOSS, r, 0, d), len(data), link)
        link_s, _ = shaper.transfer(len(data), link.down_bps, link, lost)
        if link_s * self.opt.time_scale > 0:
            await asyncio.sleep(link_s * self.opt.time_scale)
        w = self.writers.get(d)
        if w is None:
            return 0, 0.0, 0
        try:
            w.write(data)
            await w.drain()
        except ConnectionError:
            return 0, 0.0, 0
        if victim:
            frac = float(stream_rng(self.exp.spec.seed, Stream.FAILURES, r, d).random())
            delay = frac * float(self.compute_s[d]) * self.opt.time_scale
            if delay > 0:
                await asyncio.sleep(delay)
            self.killed.add(d)
            p = self.procs.get(d)
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
        return len(data), time.perf_counter() - t0, lost

    # ---- rounds -----------------------------------------------------------------------
    def _event(self, r: int, d: int | None, kind: str, detail: str) -> dict[str, Any]:
        return {"round": r, "sim_time_s": time.perf_counter() - self.t_start, "device": d, "kind": kind,
                "detail": detail}

    def _aggregate(self, received: torch.Tensor, weights: torch.Tensor, events: list[dict[str, Any]],
                   r: int) -> torch.Tensor | None:
        agg = self.exp.spec.algorithm.aggregator
        try:
            return aggregate(agg.name, received, weights, **agg.model_dump(exclude={"name"}))
        except ValueError as exc:
            events.append(self._event(r, None, "aggregation_skipped", f"{agg.name}: {exc}"))
            return None

    def _sample_memory(self) -> None:
        for d, p in self.procs.items():
            if p.poll() is None:
                m = proc_memory_kb(p.pid)
                if m:
                    cur = self.mem_max.setdefault(d, {})
                    for k, v in m.items():
                        cur[k] = max(cur.get(k, 0), v)

    async def _round(self, r: int, state: dict[str, Any]) -> None:
        exp, spec = self.exp, self.exp.spec
        a, seed = spec.algorithm, spec.seed
        wall0 = time.perf_counter()
        events: list[dict[str, Any]] = []
        self.failed = {}
        for d, kind in exp.timeline.changes(r):
            events.append(self._event(r, d, kind, f"device {d} {kind}"))
        online_ids = np.flatnonzero(exp.timeline.online(r))
        selected = select_participants(online_ids, self.exp.spec.algorithm.clients_per_round, self.exp.spec.seed, r)
        victim = stream_rng(seed, Stream.DROPOUT, r).random(self.n_dev)[selected] < spec.failures.dropout
        # Reboot every device that died earlier (killed, out of memory, crashed).
        restart = [int(d) for d in online_ids if not self._alive(int(d))]
        for d in restart:
            self.killed.discard(d)
            self._spawn(d)
            events.append(self._event(r, d, "restart", f"device {d} process restarted"))
        await self._await_hellos(restart, events, r)
        self.killed = set()
        self.coord.round = r
        self.coord.updates, self.coord.update_bytes, self.coord.metrics = {}, {}, {}
        self.coord.expect = {int(d) for d, v in zip(selected, victim) if not v and int(d) not in self.failed}
        self.done = asyncio.Event()
        self._check_done()
        g = state["global"]
        payload = enc.encode(g.numpy(), a.downlink_encoding, tensor_sizes=exp.model.tensor_sizes)
        sends = await asyncio.gather(*(self._send_model(int(d), r, payload, bool(v))
                                       for d, v in zip(selected, victim)))
        for d, v in zip(selected, victim):
            if v:
                events.append(self._event(r, int(d), "killed",
                                          "SIGKILL during the round, after receiving the global model"))
        timeout = self.opt.round_timeout_s + float(self.compute_s[selected].max(initial=0.0)) * self.opt.time_scale * 2
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except asyncio.TimeoutError:
            for d in sorted(self.coord.expect - set(self.coord.updates)):
                self.failed[d] = "timeout"
        self._sample_memory()
        for d, kind in sorted(self.failed.items()):
            if kind != "killed":
                events.append(self._event(r, d, kind.split(" ")[0], f"device {d}: {kind}"))
        for dev, detail in self.coord.reject_events:
            events.append(self._event(r, dev, "frame_rejected", detail))
        self.coord.reject_events = []

        completed = np.array(sorted(self.coord.updates), dtype=np.int64)
        new_global, server_state = g, state["server"]
        if completed.size:
            received = torch.from_numpy(np.stack([self.coord.updates[int(d)] for d in completed]))
            weights = torch.from_numpy(exp.num_samples[completed]).to(received.dtype)
            aggregate = self._aggregate(received, weights, events, r)
            if aggregate is not None:
                new_global, server_state = self.server_opt.step(g, g + aggregate, server_state)
        else:
            events.append(self._event(r, None, "empty_round", "no device completed the round"))
        if a.downlink_encoding != "float32":
            new_global = roundtrip_torch(new_global[None], a.downlink_encoding,
                                         tensor_sizes=exp.model.tensor_sizes)[0]
        acc = loss = None
        if r % spec.evaluation.every == 0 or r == spec.rounds:
            acc, loss = mlp_np.evaluate(self.linears, new_global.numpy(), self.x_test, self.y_test)
        round_s = time.perf_counter() - wall0
        pos = {int(d): i for i, d in enumerate(selected)}
        rows, losses = [], []
        for d in online_ids:
            d = int(d)
            i = pos.get(d)
            m = self.coord.metrics.get(d, {}) if d in self.coord.updates else {}
            if i is None:
                status = "idle"
            elif d in self.coord.updates:
                status = "ok"
            elif bool(victim[i]):
                status = "dropped"
            else:
                status = self.failed.get(d, "failed").split(" ")[0]
            if m.get("train_loss") is not None:
                losses.append(m["train_loss"])
            rows.append({"round": r, "device": d, "status": status, "num_samples": int(exp.num_samples[d]),
                         "compute_s": float(m.get("compute_s", 0.0)), "up_s": float(m.get("up_link_s", 0.0)),
                         "down_s": float(sends[i][1]) if i is not None else 0.0,
                         "bytes_up": int(self.coord.update_bytes.get(d, 0)),
                         "bytes_down": int(sends[i][0]) if i is not None else 0,
                         "packets_lost": (int(sends[i][2]) if i is not None else 0) + int(m.get("lost_up", 0)),
                         "energy_j": 0.0, "train_loss": m.get("train_loss"), "accuracy": None})
        bytes_up = int(sum(self.coord.update_bytes.values()))
        bytes_down = int(sum(s[0] for s in sends))
        state.update(round=r, global_=None)
        state["global"], state["server"] = new_global, server_state
        state["bytes_up"] += bytes_up
        state["bytes_down"] += bytes_down
        if acc is not None:
            state["accuracies"].append((r, acc))
        state["round_walls"].append(round_s)
        row = {"round": r, "sim_time_s": time.perf_counter() - self.t_start, "duration_s": round_s,
               "selected": int(selected.size), "completed": int(completed.size), "dropped": int(victim.sum()),
               "stragglers": 0, "train_loss": float(np.mean(losses)) if losses else None, "test_accuracy": acc,
               "test_loss": loss, "bytes_up": bytes_up, "bytes_down": bytes_down, "energy_j": 0.0,
               "wall_time_s": round_s}
        ck = {"round": r, "global_params": new_global, "server_state": server_state}
        self.store.write_round(self.run_id, row, rows, events, ck)

    async def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        exp = self.exp
        self.t_start = time.perf_counter()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._write_device_files()
        g = exp.initial_params()
        state: dict[str, Any] = {"round": 0, "global": g, "server": self.server_opt.init(g), "bytes_up": 0,
                                 "bytes_down": 0, "accuracies": [], "round_walls": []}
        try:
            start_events: list[dict[str, Any]] = []
            for d in range(self.n_dev):
                self._spawn(d)
            await self._await_hellos(list(range(self.n_dev)), start_events, 0)
            self.startup_s = time.perf_counter() - self.t_start
            self._sample_memory()
            if start_events:
                self.store.add_events(self.run_id, start_events)
            for r in range(1, exp.spec.rounds + 1):
                await self._round(r, state)
                if progress is not None:
                    acc = state["accuracies"][-1][1] if state["accuracies"] and state["accuracies"][-1][0] == r else None
                    progress(r, {"accuracy": acc, "sim_time_s": time.perf_counter() - self.t_start})
            await self._stop_devices()
        finally:
            for p in self.procs.values():
                if p.poll() is None:
                    p.kill()
            for p in self.procs.values():
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            server.close()
            await server.wait_closed()
        return state

    async def _stop_devices(self) -> None:
        for d, w in list(self.writers.items()):
            try:
                w.write(self.coord.make(fm.MsgType.CONTROL, d, self.coord.round, "none", b'{"cmd": "stop"}'))
                await w.drain()
            except ConnectionError:
                pass
        for d, p in self.procs.items():
            for _ in range(300):
                if p.poll() is not None:
                    break
                await asyncio.sleep(0.01)

    def summary(self, state: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
        exp, spec = self.exp, self.exp.spec
        accs = [a for _, a in state["accuracies"]]
        rss = [m.get("Rss", 0) for m in self.mem_max.values()]
        pss = [m.get("Pss", 0) for m in self.mem_max.values()]
        walls = state["round_walls"]
        return {
            "final_accuracy": accs[-1] if accs else None,
            "best_accuracy": max(accs) if accs else None,
            "rounds": state["round"],
            "sim_time_s": wall_time_s,
            "bytes_up": state["bytes_up"],
            "bytes_down": state["bytes_down"],
            "energy_j_per_device": {"min": 0.0, "median": 0.0, "max": 0.0},
            "energy_j_total": 0.0,
            "memory_fits": all(p.fits for p in exp.memory),
            "memory": [p.as_dict() for p in exp.memory],
            "wall_time_s": wall_time_s,
            "num_devices": exp.fleet.num_devices,
            "algorithm": f"{spec.algorithm.name} ({spec.algorithm.aggregator.name}, server {spec.algorithm.server_optimizer.name})",
            "dataset": spec.dataset.name,
            "model": f"{exp.model.name} ({exp.model.num_params:,} parameters)",
            "uplink_message_bytes": fm.frame_size(enc.encoded_size(exp.model.num_params, spec.algorithm.encoding,
                                                                   tensor_sizes=exp.model.tensor_sizes)),
            "downlink_message_bytes": fm.frame_size(enc.encoded_size(
                exp.model.num_params, spec.algorithm.downlink_encoding, tensor_sizes=exp.model.tensor_sizes)),
            "emulate": {
                "time_scale": self.opt.time_scale,
                "startup_s": getattr(self, "startup_s", None),
                "wall_per_round_s": {"median": float(np.median(walls)) if walls else None,
                                     "max": float(max(walls)) if walls else None},
                "device_rss_kb": {"median": float(np.median(rss)) if rss else None, "max": max(rss, default=None),
                                  "total": int(sum(rss))},
                "device_pss_kb": {"median": float(np.median(pss)) if pss else None, "max": max(pss, default=None),
                                  "total": int(sum(pss))},
                "process_starts": int(sum(self.spawns.values())),
                "control_bytes": self.control_bytes,
                "frames_rejected": dict(self.coord.rejected),
                "devices_with_torch": len(self.torch_devices),
            },
        }


def start_emulation(spec: ExperimentSpec, spec_yaml: str, out: Path, base_dir: Path | None,
                    options: EmulateOptions | None = None, progress: ProgressFn | None = None,
                    run_dir: Path | None = None, on_prepared: Any = None, report: bool = True
                    ) -> tuple[Path, dict[str, Any]]:
    """Check everything, create the run folder, emulate every round, write the report."""
    options = options or EmulateOptions()
    check_emulatable(spec)
    exp = prepare(spec, base_dir)
    _linears(exp)
    if on_prepared is not None:
        on_prepared(exp)
    run_dir = run_dir or new_run_dir(out, spec.name + "-emulate")
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "spec.yaml").write_text(spec_yaml)
    store = RunStore(run_dir / DB_NAME)
    run_id = uuid.uuid4().hex[:12]
    store.create_run(run_id, spec.name, "emulate", spec.seed, spec_yaml, spec.rounds, __version__)
    store.add_devices(run_id, exp.device_rows())
    handler = logging.FileHandler(run_dir / "emulate-coordinator.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    wall0 = time.perf_counter()
    try:
        emu = Emulation(exp, store, run_id, run_dir, options)
        state = asyncio.run(emu.run(progress))
        summary = emu.summary(state, time.perf_counter() - wall0)
    except BaseException:
        store.set_status(run_id, "incomplete")
        store.close()
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
    store.finish_run(run_id, "complete", summary)
    store.close()
    if report:
        from tinytwin.report.html import write_report

        write_report(run_dir)
    return run_dir, summary
