"""The peer runtime: one OS process per device of a decentralized emulation (numpy only).

Started by the fork server (:mod:`tinytwin.emulate.forkserver`) or as
``python -m tinytwin.emulate.peer CONFIG.json``. The process listens on its own TCP
port (:class:`~tinytwin.emulate.peer_net.PeerNet`), says HELLO to the coordinator with
that port, receives the *directory* (the listening ports of its link partners) and then,
for every round the coordinator starts with a ``CONTROL {"cmd": "round", ...}``:

1. gossip ``fifo``: replace its model by the mean of its FIFO of received models;
2. train locally (:func:`tinytwin.emulate.mlp_np.train`, the simulator's batch order and
   the learning rate the coordinator's per-device schedule gives), reserve the RAM the
   memory plan says training needs, wait out the paced compute time;
3. send its model directly to the peers the round's directory entry names, one MODEL
   frame each, signed with the key of that link, each after the link shaper's delay;
4. wait until every expected neighbour's model has arrived, or that neighbour is known
   to be gone (its connection closed, the coordinator's ``peer_down``, or
   ``merge_timeout_s``), then merge what arrived, in the simulator's message order
   (:mod:`tinytwin.emulate.peer_merge`);
5. report METRICS (JSON) to the coordinator and, in evaluation rounds, its model (UPDATE,
   float32), which the coordinator evaluates and uses for the consensus distance.

Every frame is checked by :class:`PeerRuntime` (the part testable without sockets):
authentication with the key of the sender's link (a device that is not a link partner
has no key: ``unknown_sender``), replay, receiver, the connection's sender, message
type, round, whether that sender was expected this round, payload and finiteness. A
rejected frame is logged, counted (reported in METRICS) and never merged.

Exit codes as :mod:`tinytwin.emulate.device`: 0 normal, 86 out of memory (RLIMIT_DATA),
3 could not talk to the coordinator.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tinytwin.emulate import mlp_np, shaper
from tinytwin.emulate.device import NO_COORDINATOR_EXIT, OOM_EXIT, _arena, log, proc_status_kb
from tinytwin.emulate.peer_merge import Fifo, merge_age, merge_average, mix_row
from tinytwin.emulate.peer_net import COORDINATOR_CONN, PeerNet
from tinytwin.emulate.wire_np import COORDINATOR_ID, Rejected, load_wire
from tinytwin.rng import Stream, stream_rng

MIXING = ("decfedavg", "serverfree")
CONTROL_COMMANDS = ("directory", "round", "peer_down", "stop")
AGE_HEADER = struct.Struct("<I")
"""gossip ``merge: age``: the model's age (local rounds behind it) before the model (docs/protocol.md)."""


@dataclass
class Received:
    """A neighbour's model that passed every check, waiting to be merged."""

    sender: int
    round: int
    values: np.ndarray
    age: int
    nbytes: int


class PeerRuntime:
    """A peer's keys, frame checks and round bookkeeping (no sockets: testable in-process).

    ``link_keys``: neighbour -> key of the link to it (the only devices it can talk to).
    """

    def __init__(self, device: int, coordinator_key: bytes, link_keys: dict[int, bytes], num_params: int,
                 tensor_sizes: list[int], encoding: str, with_age: bool = False) -> None:
        self.frame, self.enc = load_wire()
        self.id = device
        self.keys: dict[int, bytes] = {int(k): v for k, v in link_keys.items()}
        self.keys[COORDINATOR_ID] = coordinator_key
        self.guard = self.frame.ReplayGuard()
        self.nonce = time.time_ns()           # strictly increasing, also across restarts
        self.n = num_params
        self.tensor_sizes = list(tensor_sizes)
        self.encoding = encoding
        self.with_age = with_age
        self.conn_sender: dict[int, int] = {COORDINATOR_CONN: COORDINATOR_ID}
        self.rejected: Counter[str] = Counter()
        self.dead: set[int] = set()           # peers known to be gone for good
        # the current round
        self.round = 0                        # the latest round the coordinator announced
        self.active = False                   # taking part in self.round and not merged yet
        self.per_step: dict[int, int] = {}    # sender -> messages expected per exchange step
        self.steps = 1
        self.got: Counter[int] = Counter()
        self.inbox: list[Received] = []
        self.pending: list[Received] = []     # arrived early: round self.round + 1
        self.taken_steps = 0

    # ---- frames -------------------------------------------------------------------------
    def key_for(self, sender: int) -> bytes | None:
        return self.keys.get(sender)

    def make(self, msg_type: int, receiver: int, round_: int, encoding: str, payload: bytes) -> bytes:
        self.nonce += 1
        fr = self.frame.Frame(msg_type, self.id, receiver, round_, encoding, 0, self.nonce, payload)
        return self.frame.encode_frame(fr, self.keys[receiver])

    def accept(self, data: bytes, conn: int) -> tuple[str, Any]:
        """Check one complete frame that came in on connection ``conn``.

        Returns ``("control", command dict)`` or ``("model", Received | None)`` (None: kept
        for the next round) or raises :class:`Rejected`. Changes no state but the replay
        guard, the connection's binding and the round's inbox."""
        fm = self.frame
        try:
            fr = fm.decode_frame(data, self.key_for)
            self.guard.check(fr.sender, fr.nonce)
        except fm.FrameError as exc:
            raise Rejected(exc.reason, exc.detail) from None
        bound = self.conn_sender.get(conn)
        if bound is not None and fr.sender != bound:
            raise Rejected("wrong_sender", f"sender {fr.sender} on the connection of {bound}")
        if bound is None and fr.sender == COORDINATOR_ID:
            raise Rejected("wrong_sender", "coordinator frame on a peer connection")
        self.conn_sender[conn] = fr.sender    # authentic: the connection is that sender's from now on
        if fr.receiver != self.id:
            raise Rejected("wrong_receiver", f"frame for {fr.receiver}, I am {self.id}")
        if fr.sender == COORDINATOR_ID:
            if fr.msg_type != fm.MsgType.CONTROL:
                raise Rejected("unexpected_type", f"{fr.msg_type.name} from the coordinator")
            try:
                cmd = json.loads(fr.payload.decode())
                if not isinstance(cmd, dict) or cmd.get("cmd") not in CONTROL_COMMANDS:
                    raise ValueError(f"unknown command {cmd!r}")
            except (ValueError, UnicodeDecodeError) as exc:
                raise Rejected("bad_payload", str(exc)) from None
            if cmd["cmd"] == "round" and int(cmd.get("round", -1)) <= self.round:
                raise Rejected("stale_round", f"round start {cmd.get('round')} <= current {self.round}")
            return "control", cmd
        if fr.msg_type != fm.MsgType.MODEL:
            raise Rejected("unexpected_type", f"{fr.msg_type.name} from peer {fr.sender}")
        if not (fr.round == self.round and self.active) and fr.round != self.round + 1:
            raise Rejected("stale_round", f"model of round {fr.round} from {fr.sender}; current round "
                                          f"{self.round}{'' if self.active else ' (merged)'}")
        if fr.encoding != self.encoding:
            raise Rejected("bad_payload", f"encoding {fr.encoding}, expected {self.encoding}")
        payload, age = fr.payload, 0
        if self.with_age:
            if len(payload) < AGE_HEADER.size:
                raise Rejected("bad_payload", "no age header")
            (age,) = AGE_HEADER.unpack_from(payload)
            payload = payload[AGE_HEADER.size:]
        try:
            values, _ = self.enc.decode(payload, fr.encoding, self.n, tensor_sizes=self.tensor_sizes)
        except ValueError as exc:
            raise Rejected("bad_payload", str(exc)) from None
        if not fm.payload_is_finite(values):
            raise Rejected("non_finite", f"model from {fr.sender} contains NaN or Inf")
        msg = Received(fr.sender, fr.round, np.asarray(values, dtype=np.float32), int(age), len(data))
        if fr.round == self.round + 1:   # a fast neighbour's round start reached it first
            self.pending.append(msg)
            return "model", None
        self._admit(msg)
        return "model", msg

    def _admit(self, msg: Received) -> None:
        limit = self.per_step.get(msg.sender, 0) * self.steps
        if self.got[msg.sender] >= limit:
            raise Rejected("not_expected", f"no (more) model expected from {msg.sender} in round {msg.round}")
        self.got[msg.sender] += 1
        self.inbox.append(msg)

    def reject(self, reason: str, detail: str, conn: int | None = None) -> None:
        self.rejected[reason] += 1
        log(f"device {self.id}: rejected frame (connection {conn}): {reason}: {detail}")

    def handle(self, data: bytes, conn: int) -> tuple[str, Any] | None:
        """:meth:`accept`, logging and counting a rejection instead of raising."""
        try:
            return self.accept(data, conn)
        except Rejected as exc:
            self.reject(exc.reason, exc.detail, conn)
            return None

    # ---- rounds -------------------------------------------------------------------------
    def start_round(self, round_: int, online: bool, per_step: dict[int, int], steps: int = 1) -> None:
        """Enter ``round_``: who is expected to send how many models per exchange step; the
        models that arrived early are admitted (or rejected) now."""
        self.round = round_
        self.active = online
        self.per_step = {int(k): int(v) for k, v in per_step.items()} if online else {}
        self.steps = steps
        self.got = Counter()
        self.inbox = []
        self.taken_steps = 0
        early, self.pending = self.pending, []
        for msg in early:
            if msg.round != round_:
                self.reject("stale_round", f"early model of round {msg.round} from {msg.sender}")
                continue
            if not online:
                self.reject("not_expected", f"model from {msg.sender}: not taking part in round {round_}")
                continue
            try:
                self._admit(msg)
            except Rejected as exc:
                self.reject(exc.reason, exc.detail)

    def peer_gone(self, peer: int) -> None:
        self.dead.add(int(peer))

    def waiting_for(self, step: int) -> list[int]:
        """Live senders whose models for exchange ``step`` (1-based) have not all arrived."""
        return [s for s, c in self.per_step.items() if s not in self.dead and self.got[s] < c * step]

    def take(self, step: int) -> list[Received]:
        """The models of exchange ``step``, in the simulator's message order (sender id, then
        the order that sender sent them)."""
        out = []
        seen: Counter[int] = Counter()
        for msg in self.inbox:
            k = seen[msg.sender]
            seen[msg.sender] += 1
            c = self.per_step.get(msg.sender, 0)
            if (step - 1) * c <= k < step * c:
                out.append((msg.sender, k, msg))
        self.taken_steps = step
        return [m for _, _, m in sorted(out, key=lambda t: (t[0], t[1]))]

    def finish_round(self) -> None:
        self.active = False
        self.inbox = []


class Peer:
    """One device's process: its model, its training data, the round loop."""

    def __init__(self, cfg: dict[str, Any], rt: PeerRuntime, net: PeerNet, x: np.ndarray, y: np.ndarray,
                 initial: np.ndarray) -> None:
        self.cfg, self.rt, self.net, self.x, self.y = cfg, rt, net, x, y
        self.id = rt.id
        self.alg = cfg["algorithm"]
        self.params = np.asarray(initial, dtype=np.float32).copy()
        self.age = 0
        self.local_rounds = 0
        self.fifo = Fifo(self.params, int(self.alg["buffer_size"])) if self.alg.get("merge") == "fifo" else None
        self.linears = mlp_np.linears_from(cfg["linears"])
        self.tc = mlp_np.LocalTraining(**cfg["train"])
        self.link = shaper.Link(**cfg["link"])
        self.partner_down_bps = {int(k): float(v) for k, v in cfg["partners"].items()}
        self.ts = float(cfg["time_scale"])
        self.seed = int(cfg["seed"])
        self.deferred: list[dict[str, Any]] = []
        self.stopping = False

    # ---- events from the reader thread ---------------------------------------------------
    def pump(self, timeout: float | None) -> dict[str, Any] | None:
        """Handle one event; return a coordinator command if that is what it was."""
        try:
            ev = self.net.events.get(timeout=timeout)
        except queue.Empty:
            return None
        kind, conn = ev[0], ev[1]
        if kind == "frame":
            got = self.rt.handle(ev[2], conn)
            if got is not None and got[0] == "control":
                return got[1]
        elif kind == "eof":
            if conn == COORDINATOR_CONN:
                return {"cmd": "stop", "reason": "the coordinator closed the connection"}
            sender = self.rt.conn_sender.get(conn)
            if sender is not None:
                self.rt.peer_gone(sender)
        else:  # bad_header
            self.rt.reject(ev[2], f"{ev[3]} (header); connection closed", conn)
            if conn == COORDINATOR_CONN:
                return {"cmd": "stop", "reason": "bad header from the coordinator"}
        return None

    def run(self) -> int:
        while not self.stopping:
            cmd = self.deferred.pop(0) if self.deferred else self.pump(None)
            if cmd is not None:
                self.command(cmd)
        return 0

    def command(self, cmd: dict[str, Any]) -> None:
        c = cmd["cmd"]
        if c == "stop":
            log(f"device {self.id}: stop ({cmd.get('reason', 'coordinator')})")
            self.stopping = True
        elif c == "directory":
            self.net.ports = {int(k): int(v) for k, v in cmd["ports"].items()}
        elif c == "peer_down":
            self.rt.peer_gone(int(cmd["device"]))
        elif c == "round":
            self.play_round(cmd)

    # ---- one round ------------------------------------------------------------------------
    def play_round(self, cmd: dict[str, Any]) -> None:
        r = int(cmd["round"])
        online = bool(cmd.get("online", False))
        steps = int(cmd.get("steps", 1))
        self.rt.start_round(r, online, cmd.get("expect", {}), steps)
        if not online:
            return
        if self.fifo is not None:
            self.params = self.fifo.mean()
        t0 = time.perf_counter()
        arena = _arena(int(self.cfg["arena_bytes"]))
        params, loss, nsteps = mlp_np.train(self.linears, self.params, self.x, self.y,
                                            replace(self.tc, lr=float(cmd["lr"])), self.seed, r, self.id)
        if arena is not None:
            arena.close()
        busy = time.perf_counter() - t0
        pace = float(self.cfg["compute_s"]) * self.ts - busy
        if pace > 0:
            time.sleep(pace)
        compute_s = time.perf_counter() - t0
        self.age += 1
        self.local_rounds += 1
        sent: list[list[Any]] = []
        timeouts: list[int] = []
        received: list[Received] = []
        wait_s = 0.0
        for step in range(1, steps + 1):
            payload = self._payload(params)
            for k, dst in enumerate(cmd.get("send", [])):
                sent.append(self._send(int(dst), r, payload, step, k))
            t_wait = time.perf_counter()
            timeouts += self._wait(step)
            wait_s += time.perf_counter() - t_wait
            msgs = self.rt.take(step)
            received += msgs
            params = self._merge(params, msgs, cmd)
            if self.stopping:
                return
        self.params = params
        metrics = {
            "train_loss": loss, "steps": nsteps, "compute_s": compute_s, "busy_s": busy, "wait_s": wait_s,
            "sent": sent, "received": [[m.sender, m.nbytes] for m in received], "timeouts": timeouts,
            "gone": sorted(self.rt.dead), "local_rounds": self.local_rounds, "age": self.age,
            "rss_kb": proc_status_kb("VmRSS"), "hwm_kb": proc_status_kb("VmHWM"),
            "rejected": dict(self.rt.rejected), "torch_loaded": "torch" in sys.modules,
        }
        fm = self.rt.frame
        self.net.send_coordinator(self.rt.make(fm.MsgType.METRICS, COORDINATOR_ID, r, "none",
                                               json.dumps(metrics).encode()))
        if cmd.get("report_model", True):   # for evaluation and the consensus distance
            self.net.send_coordinator(self.rt.make(fm.MsgType.UPDATE, COORDINATOR_ID, r, "float32",
                                                   self.rt.enc.encode(self.params, "float32")))
        self.rt.finish_round()

    def _payload(self, params: np.ndarray) -> bytes:
        body = self.rt.enc.encode(params, self.rt.encoding, tensor_sizes=self.rt.tensor_sizes)
        return AGE_HEADER.pack(self.age) + body if self.rt.with_age else body

    def _send(self, dst: int, r: int, payload: bytes, step: int, k: int) -> list[Any]:
        """Shaped send of one MODEL frame; returns [dst, frame bytes, link s, lost packets, delivered]."""
        data = self.rt.make(self.rt.frame.MsgType.MODEL, dst, r, self.rt.encoding, payload)
        link = self.link
        lost = shaper.draw_lost(stream_rng(self.seed, Stream.MSG_LOSS, r, step, self.id, k), len(data), link)
        bps = min(link.up_bps, self.partner_down_bps.get(dst, link.up_bps))
        link_s, _ = shaper.transfer(len(data), bps, link, lost)
        if link_s * self.ts > 0:
            time.sleep(link_s * self.ts)
        ok = self.net.send(dst, data)
        return [dst, len(data), link_s, lost, ok]

    def _wait(self, step: int) -> list[int]:
        """Handle events until every live expected neighbour's models of ``step`` are in;
        return the neighbours given up on after ``merge_timeout_s``."""
        deadline = time.monotonic() + float(self.cfg["merge_timeout_s"])
        while self.rt.waiting_for(step):
            left = deadline - time.monotonic()
            if left <= 0:
                late = self.rt.waiting_for(step)
                log(f"device {self.id}: round {self.rt.round}: no model from {late} within "
                    f"{self.cfg['merge_timeout_s']} s; merging what arrived")
                return late
            cmd = self.pump(left)
            if cmd is None:
                continue
            if cmd["cmd"] == "peer_down":
                self.rt.peer_gone(int(cmd["device"]))
            elif cmd["cmd"] == "stop":
                self.command(cmd)
                return []
            else:  # the coordinator moved on without us: merge what we have, then obey
                self.deferred.append(cmd)
                return self.rt.waiting_for(step)
        return []

    def _merge(self, params: np.ndarray, msgs: list[Received], cmd: dict[str, Any]) -> np.ndarray:
        name = self.alg["name"]
        if name in MIXING:
            weights = {int(k): float(v) for k, v in cmd.get("weights", {}).items()}   # none: isolated
            got = [(weights[m.sender], m.values) for m in msgs]
            missing = sum(weights.values()) - sum(w for w, _ in got)
            return mix_row(params, float(cmd.get("self_weight", 1.0)), got, max(missing, 0.0))
        merge = self.alg["merge"]
        if merge == "average":
            return merge_average(params, [m.values for m in msgs])
        if merge == "age":
            params, self.age = merge_age(params, self.age, [(m.values, m.age) for m in msgs])
            return params
        assert self.fifo is not None
        for m in msgs:
            self.fifo.push(m.values)
        return params


def _load_keys(path: str) -> tuple[bytes, dict[int, bytes]]:
    with open(path) as fh:
        raw = json.load(fh)
    return bytes.fromhex(raw["coordinator"]), {int(k): bytes.fromhex(v) for k, v in raw["links"].items()}


def run(cfg: dict[str, Any]) -> int:
    ckey, links = _load_keys(cfg["key_file"])
    shard = np.load(cfg["data_file"])
    x, y = shard["x"].astype(np.float32), shard["y"].astype(np.int64)
    initial = np.load(cfg["initial_file"])
    alg = cfg["algorithm"]
    rt = PeerRuntime(int(cfg["device"]), ckey, links, int(cfg["num_params"]), list(cfg["tensor_sizes"]),
                     cfg["encoding"], with_age=alg.get("merge") == "age")
    net = PeerNet(int(cfg["max_frame"]))
    # The first BLAS call makes OpenBLAS allocate its buffers: before the baseline (device.py).
    _ = np.ones((8, 8), np.float32) @ np.ones((8, 8), np.float32)
    try:
        net.connect_coordinator(cfg["host"], int(cfg["port"]))
    except OSError as exc:
        log(f"device {rt.id}: cannot connect to the coordinator: {exc}")
        return NO_COORDINATOR_EXIT
    net.start()
    baseline = proc_status_kb("VmData") * 1024
    cap = baseline + int(cfg["mem_budget_bytes"])
    hello = {"pid": os.getpid(), "port": net.port, "vmdata_baseline": baseline, "rlimit_data": cap}
    net.send_coordinator(rt.make(rt.frame.MsgType.HELLO, COORDINATOR_ID, 0, "none", json.dumps(hello).encode()))
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    log(f"device {rt.id}: pid {os.getpid()} port {net.port}, {len(links)} link keys, "
        f"VmData baseline {baseline} B, RLIMIT_DATA {cap} B")
    try:
        return Peer(cfg, rt, net, x, y, initial).run()
    finally:
        net.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        cfg = json.load(fh)
    try:
        return run(cfg)
    except MemoryError:
        log(f"device {cfg.get('device')}: out of memory (RLIMIT_DATA)")
        os._exit(OOM_EXIT)
    except OSError as exc:
        if exc.errno == 12:  # ENOMEM from mmap under the cap
            log(f"device {cfg.get('device')}: out of memory (RLIMIT_DATA): {exc}")
            os._exit(OOM_EXIT)
        if isinstance(exc, ConnectionError):
            log(f"device {cfg.get('device')}: lost the coordinator: {exc}")
            return NO_COORDINATOR_EXIT
        raise


if __name__ == "__main__":
    sys.exit(main())
