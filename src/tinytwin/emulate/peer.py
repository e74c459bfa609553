"""The peer runtime: one OS process per device of a decentralized emulation (numpy only).

Started by the fork server (:mod:`tinytwin.emulate.forkserver`) or as
``python -m tinytwin.emulate.peer CONFIG.json``. The process listens on its own TCP
port (:class:`~tinytwin.emulate.peer_net.PeerNet`), says HELLO to the coordinator with
that port, receives the *directory* (the listening ports of its link partners) and then,
for every round the coordinator starts with a ``CONTROL {"cmd": "round", ...}``:

1. gossip ``fifo``: replace its model by the mean of its FIFO of received models;
2. train locally (:func:`tinytwin.emulate.mlp_np.train`, the simulator's batch order and
   the learning rate the coordinator's per-device schedule gives — or, for a firmware
   device, the C client on QEMU: :mod:`tinytwin.emulate.peer_trainer`), reserve the RAM the
   memory plan says training needs, wait out the paced compute time;
3. send its model directly to the peers the round's directory entry names, one MODEL
   frame each, signed with the key of that link, each after the link shaper's delay
   (Gist: one SEGMENT frame per send — the device's accuracy on the shared validation
   set, then the bitmap and values of the band it drew, :mod:`tinytwin.algorithms.gist_np`);
4. wait until every expected neighbour's model has arrived, or that neighbour is known
   to be gone (its connection closed, the coordinator's ``peer_down``, or
   ``merge_timeout_s``), then merge what arrived, in the simulator's message order
   (:mod:`tinytwin.emulate.peer_merge`; Gist: into its segment buffer, merging once it
   holds ``min_received``; a firmware device merges on the board, ``M`` / ``G``);
5. report METRICS (JSON) to the coordinator and, in evaluation rounds, its model (UPDATE,
   float32), which the coordinator evaluates and uses for the consensus distance.

Every frame is checked by :class:`PeerRuntime` (the part testable without sockets):
authentication with the key of the sender's link (a device that is not a link partner
has no key: ``unknown_sender``), replay, receiver, the connection's sender, message
type, round, whether that sender was expected this round, payload and finiteness. A
rejected frame is logged, counted (reported in METRICS) and never merged.

A coordinator that vanishes (SIGKILL) does not stop the peer: it finishes its round with its
neighbours, keeps the report, calls the coordinator's address again for ``reconnect_grace_s``
and says HELLO again; a resumed coordinator's ``CONTROL {"cmd": "resume", "round": R}`` rolls
it back to its state after round R (kept before every round) and moves the frames' round
numbers past the abandoned attempt's (``wire``). See docs/emulation.md.

Exit codes as :mod:`tinytwin.emulate.device`: 0 normal, 86 out of memory (RLIMIT_DATA),
87 firmware fault (``fault.json`` in the device's firmware folder), 3 could not talk to
the coordinator.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import resource
import struct
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytwin.algorithms import gist_np
from tinytwin.emulate import mlp_np, shaper
from tinytwin.emulate.device import NO_COORDINATOR_EXIT, _arena, log, proc_status_kb, run_main
from tinytwin.emulate.peer_merge import Fifo
from tinytwin.emulate.peer_net import COORDINATOR_CONN, PeerNet
from tinytwin.emulate.peer_trainer import NumpyPeerTrainer, make_peer_trainer
from tinytwin.emulate.runtime_env import vm_data_bytes, warm_blas
from tinytwin.emulate.trainers import FIRMWARE_FAULT_EXIT, DeviceFault
from tinytwin.emulate.wire_np import COORDINATOR_ID, Rejected, decode_checked, load_wire
from tinytwin.rng import Stream, stream_rng

MIXING = ("decfedavg", "serverfree")
CONTROL_COMMANDS = ("directory", "round", "peer_down", "stop", "resume")
SNAPSHOT = ("params", "age", "local_rounds", "fifo", "buffer", "gist_merges", "accuracy")
"""What a peer rolls back when a resumed coordinator replays a round it had not committed."""
AGE_HEADER = struct.Struct("<I")
"""gossip ``merge: age``: the model's age (local rounds behind it) before the model (docs/protocol.md)."""
PULL_REQUEST = struct.Struct("<III")
"""segmented gossip: a pull request names the segment and its range (index, first, end): 12 bytes,
the simulator's ``REQUEST_PAYLOAD_BYTES``."""


@dataclass
class Received:
    """A neighbour's model (or Gist segment) that passed every check, waiting to be merged."""

    sender: int
    round: int
    values: np.ndarray  # Gist: the values of the set positions only, in index order
    age: int
    nbytes: int
    accuracy: float = 0.0  # Gist: the sender's validation accuracy (payload header)
    mask: np.ndarray | None = None  # Gist: which parameters the segment carries
    request: tuple[int, int, int] | None = None  # segmented gossip: a pull request (segment, lo, hi)


class PeerRuntime:
    """A peer's keys, frame checks and round bookkeeping (no sockets: testable in-process).

    ``link_keys``: neighbour -> key of the link to it (the only devices it can talk to).
    ``gist``: peers send Gist segments (SEGMENT frames, ``bitmap`` payload with the sender's
    accuracy first) instead of whole models (MODEL frames in ``encoding``).
    ``segment_bounds``: segmented gossip — peers send pull requests (CONTROL frames, encoding
    ``none``, :data:`PULL_REQUEST`; docs/protocol.md) and answer them with one contiguous
    segment (SEGMENT frames in ``encoding``).
    """

    def __init__(
        self,
        device: int,
        coordinator_key: bytes,
        link_keys: dict[int, bytes],
        num_params: int,
        tensor_sizes: list[int],
        encoding: str,
        with_age: bool = False,
        gist: bool = False,
        segment_bounds: list[int] | None = None,
    ) -> None:
        self.frame, self.enc = load_wire()
        self.id = device
        self.keys: dict[int, bytes] = {int(k): v for k, v in link_keys.items()}
        self.keys[COORDINATOR_ID] = coordinator_key
        self.guard = self.frame.ReplayGuard()
        self.nonce = time.time_ns()  # strictly increasing, also across restarts
        self.n = num_params
        self.tensor_sizes = list(tensor_sizes)
        self.gist = gist
        self.bounds = None if segment_bounds is None else [int(b) for b in segment_bounds]
        self.segmented = self.bounds is not None
        self.encoding = "bitmap" if gist else encoding
        self.msg_type = self.frame.MsgType.SEGMENT if gist or self.segmented else self.frame.MsgType.MODEL
        self.with_age = with_age
        self.conn_sender: dict[int, int] = {COORDINATOR_CONN: COORDINATOR_ID}
        self.rejected: Counter[str] = Counter()
        self.dead: set[int] = set()  # peers known to be gone for good
        # the current round
        self.round = 0  # the latest round the coordinator announced
        self.active = False  # taking part in self.round and not merged yet
        self.per_step: dict[int, int] = {}  # sender -> messages expected per exchange step
        self.steps = 1
        self.got: Counter[int] = Counter()
        self.inbox: list[Received] = []
        self.pending: list[Received] = []  # arrived early: round self.round + 1
        self.taken_steps = 0
        # segmented gossip: pull requests expected from / received from each peer, and the
        # requests this device sent to each peer (responses come back in that order)
        self.req_expect: dict[int, int] = {}
        self.req_got: Counter[int] = Counter()
        self.requests: list[Received] = []
        self.outstanding: dict[int, list[tuple[int, int, int]]] = {}

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
        fr = decode_checked(fm, data, self.key_for, self.guard)
        bound = self.conn_sender.get(conn)
        if bound is not None and fr.sender != bound:
            raise Rejected("wrong_sender", f"sender {fr.sender} on the connection of {bound}")
        if bound is None and fr.sender == COORDINATOR_ID:
            raise Rejected("wrong_sender", "coordinator frame on a peer connection")
        self.conn_sender[conn] = fr.sender  # authentic: the connection is that sender's from now on
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
            # a round's wire number (``wire``) differs from its number after a coordinator resume
            if cmd["cmd"] == "round" and int(cmd.get("wire", cmd.get("round", -1))) <= self.round:
                raise Rejected("stale_round", f"round start {cmd.get('round')} <= current {self.round}")
            return "control", cmd
        is_request = self.segmented and fr.msg_type == fm.MsgType.CONTROL
        if fr.msg_type != self.msg_type and not is_request:
            raise Rejected("unexpected_type", f"{fr.msg_type.name} from peer {fr.sender}")
        if not (fr.round == self.round and self.active) and fr.round != self.round + 1:
            raise Rejected(
                "stale_round",
                f"model of round {fr.round} from {fr.sender}; current round "
                f"{self.round}{'' if self.active else ' (merged)'}",
            )
        if is_request:
            if fr.encoding != "none":
                raise Rejected("bad_payload", f"pull request in encoding {fr.encoding}")
            msg = self._pull_request(fr, len(data))
        elif fr.encoding != self.encoding:
            raise Rejected("bad_payload", f"encoding {fr.encoding}, expected {self.encoding}")
        elif self.segmented:
            msg = self._pulled_segment(fr, len(data))
        elif self.gist:
            msg = self._gist_segment(fr, len(data))
        else:
            msg = self._model(fr, len(data))
        if fr.round == self.round + 1:  # a fast neighbour's round start reached it first
            self.pending.append(msg)
            return "model", None
        self._admit(msg)
        return "model", msg

    def _model(self, fr: Any, nbytes: int) -> Received:
        fm = self.frame
        payload, age = fr.payload, 0
        if self.with_age:
            if len(payload) < AGE_HEADER.size:
                raise Rejected("bad_payload", "no age header")
            (age,) = AGE_HEADER.unpack_from(payload)
            payload = payload[AGE_HEADER.size :]
        try:
            values, _ = self.enc.decode(payload, fr.encoding, self.n, tensor_sizes=self.tensor_sizes)
        except ValueError as exc:
            raise Rejected("bad_payload", str(exc)) from None
        if not fm.payload_is_finite(values):
            raise Rejected("non_finite", f"model from {fr.sender} contains NaN or Inf")
        return Received(fr.sender, fr.round, np.asarray(values, dtype=np.float32), int(age), nbytes)

    def _gist_segment(self, fr: Any, nbytes: int) -> Received:
        """A Gist payload: float32 accuracy, then the bitmap and the values of the set positions."""
        try:
            acc, values, mask = gist_np.decode_payload(fr.payload, self.n)
        except ValueError as exc:
            raise Rejected("bad_payload", str(exc)) from None
        if not np.isfinite(acc):
            raise Rejected("non_finite", f"segment from {fr.sender}: accuracy {acc}")
        if not 0.0 <= acc <= 1.0:
            raise Rejected("bad_payload", f"segment from {fr.sender}: accuracy {acc} is not in [0, 1]")
        vals = np.ascontiguousarray(values[mask], dtype=np.float32)
        if not self.frame.payload_is_finite(vals):
            raise Rejected("non_finite", f"segment from {fr.sender} contains NaN or Inf")
        return Received(fr.sender, fr.round, vals, 0, nbytes, float(acc), mask)

    def _pull_request(self, fr: Any, nbytes: int) -> Received:
        assert self.bounds is not None
        if len(fr.payload) != PULL_REQUEST.size:
            raise Rejected("bad_payload", f"pull request of {len(fr.payload)} bytes from {fr.sender}")
        seg, lo, hi = PULL_REQUEST.unpack(fr.payload)
        if not (seg + 1 < len(self.bounds) and (lo, hi) == (self.bounds[seg], self.bounds[seg + 1])):
            raise Rejected("bad_payload", f"pull request for segment {seg} [{lo}, {hi}) from {fr.sender}")
        return Received(fr.sender, fr.round, np.zeros(0, np.float32), 0, nbytes, request=(seg, lo, hi))

    def _pulled_segment(self, fr: Any, nbytes: int) -> Received:
        width = 4 if fr.encoding == "float32" else 2
        if fr.encoding not in ("float32", "float16") or len(fr.payload) % width:
            raise Rejected("bad_payload", f"segment of {len(fr.payload)} bytes in {fr.encoding} from {fr.sender}")
        values, _ = self.enc.decode(fr.payload, fr.encoding, len(fr.payload) // width)
        if not self.frame.payload_is_finite(values):
            raise Rejected("non_finite", f"segment from {fr.sender} contains NaN or Inf")
        return Received(fr.sender, fr.round, np.asarray(values, dtype=np.float32), 0, nbytes)

    def _admit(self, msg: Received) -> None:
        if msg.request is not None:
            if self.req_got[msg.sender] >= self.req_expect.get(msg.sender, 0):
                raise Rejected(
                    "not_expected", f"no (more) pull request expected from {msg.sender} in round {msg.round}"
                )
            self.req_got[msg.sender] += 1
            self.requests.append(msg)
            return
        if self.segmented:  # the k-th answer of a peer is to the k-th request this device sent it
            asked = self.outstanding.get(msg.sender, [])
            k = self.got[msg.sender]
            if k < len(asked) and msg.values.size != asked[k][2] - asked[k][1]:
                raise Rejected(
                    "bad_payload",
                    f"segment of {msg.values.size} values from {msg.sender}; requested [{asked[k][1]}, {asked[k][2]})",
                )
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
    def start_round(
        self,
        round_: int,
        online: bool,
        per_step: dict[int, int],
        steps: int = 1,
        requests: dict[int, int] | None = None,
        outstanding: dict[int, list[tuple[int, int, int]]] | None = None,
    ) -> None:
        """Enter ``round_``: who is expected to send how many models per exchange step (segmented
        gossip: how many pull requests, and which segments this device asks each peer for);
        the models that arrived early are admitted (or rejected) now."""
        self.round = round_
        self.active = online
        self.per_step = {int(k): int(v) for k, v in per_step.items()} if online else {}
        self.steps = steps
        self.got = Counter()
        self.inbox = []
        self.taken_steps = 0
        self.req_expect = {int(k): int(v) for k, v in (requests or {}).items()} if online else {}
        self.req_got = Counter()
        self.requests = []
        self.outstanding = dict(outstanding or {}) if online else {}
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
        """Live senders whose models for exchange ``step`` (1-based) — or pull requests — have
        not all arrived."""
        out = [s for s, c in self.per_step.items() if s not in self.dead and self.got[s] < c * step]
        return out + [
            s for s, c in self.req_expect.items() if s not in self.dead and self.req_got[s] < c and s not in out
        ]

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
    """One device's process: its model, its training data, the round loop.

    ``trainer`` trains and merges (:mod:`tinytwin.emulate.peer_trainer`: numpy here, or the
    device's firmware on QEMU); everything else — frames, links, waiting — is done here."""

    def __init__(
        self,
        cfg: dict[str, Any],
        rt: PeerRuntime,
        net: PeerNet,
        x: np.ndarray,
        y: np.ndarray,
        initial: np.ndarray,
        trainer: NumpyPeerTrainer | None = None,
    ) -> None:
        self.cfg, self.rt, self.net, self.x, self.y = cfg, rt, net, x, y
        self.id = rt.id
        self.alg = cfg["algorithm"]
        self.params = np.asarray(initial, dtype=np.float32).copy()
        self.age = 0
        self.local_rounds = 0
        self.fifo = (
            Fifo(self.params, int(self.alg["buffer_size"]))
            if self.alg.get("merge") == "fifo" and self.alg["name"] == "gossip"
            else None
        )
        self.linears = mlp_np.linears_from(cfg["linears"])
        self.trainer = trainer if trainer is not None else NumpyPeerTrainer(cfg, x, y)
        self.gist: dict[str, Any] | None = self.alg.get("gist") if self.alg["name"] == "gist" else None
        if self.gist is not None:
            val = np.load(cfg["validation_file"])
            self.x_val, self.y_val = val["x"].astype(np.float32), val["y"].astype(np.int64)
            self.band_bounds = gist_np.band_bounds(rt.n, int(self.gist["segments"]))
            # received segments (sender weight, mask, values), oldest dropped when full
            self.buffer: deque[tuple[float, np.ndarray, np.ndarray]] = deque(maxlen=int(self.gist["buffer_size"]))
            self.gist_merges = 0
            self.accuracy = 0.0
        self.serving: tuple[np.ndarray, int, list[list[Any]]] | None = None  # segmented gossip
        self.answered = 0
        self.link = shaper.Link(**cfg["link"])
        self.partner_down_bps = {int(k): float(v) for k, v in cfg["partners"].items()}
        self.ts = float(cfg["time_scale"])
        self.seed = int(cfg["seed"])
        self.deferred: list[dict[str, Any]] = []
        self.stopping = False
        # coordinator resume (docs/emulation.md): the state before the latest round, the last
        # round played, the wire number of the current round, whether the coordinator is gone
        self.done_round = 0
        self.snapshot: tuple[int, dict[str, Any]] | None = None
        self.wr = 0
        self.lost = False
        self.reconnects = 0

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
            if conn == COORDINATOR_CONN:  # killed, or done: call its address again (reconnect_grace_s)
                return {"cmd": "lost"} if not self.stopping else None
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
            if self.lost and not self.stopping and not self.reconnect():
                return NO_COORDINATOR_EXIT
        return 0

    # ---- coordinator resume ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return copy.deepcopy({k: getattr(self, k) for k in SNAPSHOT if hasattr(self, k)})

    def reconnect(self) -> bool:
        """The coordinator's connection closed (it was killed): call its address every 0.2 s for
        ``reconnect_grace_s``, then say HELLO again (``reconnects`` >= 1, the last round played);
        the model stays here. False: nobody answered in time (the process exits)."""
        grace = float(self.cfg.get("reconnect_grace_s", 60.0))
        deadline = time.monotonic() + grace
        log(f"device {self.id}: lost the coordinator after round {self.done_round}; calling it again for {grace} s")
        while time.monotonic() < deadline:
            try:
                self.net.connect_coordinator(self.cfg["host"], int(self.cfg["port"]), timeout=2.0)
                break
            except OSError:
                time.sleep(0.2)
        else:
            log(f"device {self.id}: no coordinator within {grace} s; exiting")
            return False
        self.lost = False
        self.reconnects += 1
        hello = {"pid": os.getpid(), "port": self.net.port, "reconnects": self.reconnects, "round": self.done_round}
        try:
            self.net.send_coordinator(
                self.rt.make(self.rt.frame.MsgType.HELLO, COORDINATOR_ID, 0, "none", json.dumps(hello).encode())
            )
        except OSError:
            self.lost = True
            return self.reconnect() if time.monotonic() < deadline else False
        log(f"device {self.id}: connected to the coordinator again (connection {self.reconnects + 1})")
        return True

    def resume(self, cmd: dict[str, Any]) -> None:
        """A resumed coordinator continues after round ``cmd["round"]``: roll back to the state
        after that round (this device may have played one more round, never committed), take the
        new wire numbering (frames of the abandoned round are stale from now on), say whether it
        could."""
        r = int(cmd["round"])
        ok = True
        if self.done_round != r:
            if self.snapshot is not None and self.snapshot[0] == r:
                for k, v in self.snapshot[1].items():
                    setattr(self, k, v)
                log(f"device {self.id}: rolled back from round {self.done_round} to round {r}")
                self.done_round = r
            else:
                ok = False
                log(f"device {self.id}: cannot resume after round {r}: last played {self.done_round}")
        self.snapshot = None
        rt = self.rt
        rt.round, rt.active, rt.inbox, rt.pending, rt.requests = int(cmd["wire"]), False, [], [], []
        self.wr = rt.round
        self.net.send_coordinator(
            rt.make(
                rt.frame.MsgType.METRICS,
                COORDINATOR_ID,
                rt.round,
                "none",
                json.dumps(
                    {"kind": "resumed", "ok": ok, "round": self.done_round, "local_rounds": self.local_rounds}
                ).encode(),
            )
        )

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
        elif c == "resume":
            self.resume(cmd)
        elif c == "lost":
            self.lost = True

    # ---- one round ------------------------------------------------------------------------
    def play_round(self, cmd: dict[str, Any]) -> None:
        r = int(cmd["round"])
        self.wr = int(cmd.get("wire", r))  # the frames' round number (differs from r after a resume)
        self.snapshot = (self.done_round, self._state())
        self.done_round = r
        online = bool(cmd.get("online", False))
        steps = int(cmd.get("steps", 1))
        outstanding: dict[int, list[tuple[int, int, int]]] = {}
        bounds = self.rt.bounds
        if bounds is not None:
            for seg, peer, _ in cmd.get("pulls", []):
                outstanding.setdefault(int(peer), []).append((int(seg), bounds[int(seg)], bounds[int(seg) + 1]))
        self.rt.start_round(self.wr, online, cmd.get("expect", {}), steps, cmd.get("requests"), outstanding)
        self.serving = None
        if not online:
            return
        tr = self.trainer
        if self.fifo is not None:
            self.params = tr.fifo_mean(self.fifo.slots[: self.fifo.count])
        t0 = time.perf_counter()
        arena = _arena(int(self.cfg["arena_bytes"])) if tr.caps_process_memory else None
        res = tr.train(self.params, r, float(cmd["lr"]))
        params, loss, nsteps = res.params, res.train_loss, res.steps
        if arena is not None:
            arena.close()
        busy = time.perf_counter() - t0
        pace = res.modelled_compute_s * self.ts - busy  # a firmware device: its instruction count's time
        if pace > 0:
            time.sleep(pace)
        compute_s = time.perf_counter() - t0
        self.age += 1
        self.local_rounds += 1
        sent: list[list[Any]] = []
        timeouts: list[int] = []
        received: list[Received] = []
        wait_s = 0.0
        extra: dict[str, Any] = dict(res.extra)
        merge_insns0 = tr.merge_insns
        for step in range(1, steps + 1):
            encoding, msg_type = self.rt.encoding, self.rt.msg_type
            if self.gist is not None:
                payloads, extra["val_accuracy"] = self._gist_payloads(params, cmd)
            elif bounds is not None:  # segmented gossip: pull requests; answer others' with this model
                payloads = [
                    PULL_REQUEST.pack(int(seg), bounds[int(seg)], bounds[int(seg) + 1])
                    for seg, _, _ in cmd.get("pulls", [])
                ]
                encoding, msg_type = "none", self.rt.frame.MsgType.CONTROL
                self.serving, self.answered = (params, r, sent), 0
            else:
                payloads = [self._payload(params)] * len(cmd.get("send", []))
            for k, dst in enumerate(cmd.get("send", [])):
                sent.append(self._send(int(dst), r, payloads[k], step, k, encoding, msg_type))
            t_wait = time.perf_counter()
            timeouts += self._wait(step)
            wait_s += time.perf_counter() - t_wait
            msgs = self.rt.take(step)
            received += msgs
            params = self._merge(params, msgs, cmd, extra)
            if self.stopping:
                return
        self.params = params
        received += self.rt.requests  # segmented gossip: the pull requests answered
        if tr.merge_insns > merge_insns0:
            extra["merge_insns"] = tr.merge_insns - merge_insns0
        metrics = {
            "train_loss": loss,
            "steps": nsteps,
            "compute_s": compute_s,
            "busy_s": busy,
            "wait_s": wait_s,
            "sent": sent,
            "received": [[m.sender, m.nbytes] for m in received],
            "timeouts": timeouts,
            "gone": sorted(self.rt.dead),
            "local_rounds": self.local_rounds,
            "age": self.age,
            "rss_kb": proc_status_kb("VmRSS"),
            "hwm_kb": proc_status_kb("VmHWM"),
            "rejected": dict(self.rt.rejected),
            "torch_loaded": "torch" in sys.modules,
            **extra,
        }
        fm = self.rt.frame
        self.rt.finish_round()
        if self.lost:  # the coordinator is gone: the report goes nowhere (a resume replays the round)
            return
        try:
            self.net.send_coordinator(
                self.rt.make(fm.MsgType.METRICS, COORDINATOR_ID, self.wr, "none", json.dumps(metrics).encode())
            )
            if cmd.get("report_model", True):  # for evaluation and the consensus distance
                self.net.send_coordinator(
                    self.rt.make(
                        fm.MsgType.UPDATE,
                        COORDINATOR_ID,
                        self.wr,
                        "float32",
                        self.rt.enc.encode(self.params, "float32"),
                    )
                )
        except OSError:
            self.lost = True

    def _payload(self, params: np.ndarray) -> bytes:
        body = self.rt.enc.encode(params, self.rt.encoding, tensor_sizes=self.rt.tensor_sizes)
        return AGE_HEADER.pack(self.age) + body if self.rt.with_age else body

    def _gist_payloads(self, params: np.ndarray, cmd: dict[str, Any]) -> tuple[list[bytes], float]:
        """Gist after training: the accuracy on the shared validation set, the bands, and one
        segment per send, each band drawn as the simulator draws it (gist_np); returns the
        payloads in send order and the accuracy."""
        g = self.gist
        assert g is not None
        acc, _ = mlp_np.evaluate(self.linears, params, self.x_val, self.y_val)
        self.accuracy = float(acc)
        send = cmd.get("send", [])
        if not send:
            return [], self.accuracy
        where = cmd.get("gist", {})
        key = int(cmd["round"])
        if g["segmentation"] == "importance":
            order = gist_np.band_order(params)
        else:
            order = gist_np.random_order(self.seed, key, int(where.get("row", 0)), self.rt.n)
        importance = gist_np.band_importance(params, order, self.band_bounds)
        probs = gist_np.selection_probabilities(
            importance, g["selection"], float(g["exp_base"]), bool(g["drop_lowest"])
        )
        u = gist_np.send_uniforms(self.seed, key, int(where.get("offset", 0)), len(send))
        bands = gist_np.choose_bands(probs, u)
        out = [
            gist_np.encode_payload(self.accuracy, params, gist_np.segment_mask(order, self.band_bounds, int(b)))
            for b in bands
        ]
        return out, self.accuracy

    def _send(
        self, dst: int, r: int, payload: bytes, step: int, k: int, encoding: str | None = None, msg_type: Any = None
    ) -> list[Any]:
        """Shaped send of one MODEL (Gist, segmented gossip: SEGMENT; a pull request: CONTROL)
        frame; returns [dst, frame bytes, link s, lost packets, delivered]."""
        data = self.rt.make(msg_type or self.rt.msg_type, dst, self.wr, encoding or self.rt.encoding, payload)
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
        while True:
            self._serve()
            if not self.rt.waiting_for(step):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                late = self.rt.waiting_for(step)
                log(
                    f"device {self.id}: round {self.rt.round}: no model from {late} within "
                    f"{self.cfg['merge_timeout_s']} s; merging what arrived"
                )
                return late
            cmd = self.pump(left)
            if cmd is None:
                continue
            if cmd["cmd"] == "peer_down":
                self.rt.peer_gone(int(cmd["device"]))
            elif cmd["cmd"] == "lost":  # the coordinator is gone: finish the round with the neighbours
                self.lost = True
            elif cmd["cmd"] == "stop":
                self.command(cmd)
                return []
            else:  # the coordinator moved on without us: merge what we have, then obey
                self.deferred.append(cmd)
                return self.rt.waiting_for(step)
        return []

    def _serve(self) -> None:
        """Segmented gossip: answer the pull requests that came in, in arrival order, each with
        the requested segment of this round's trained model (before this device's own merge)."""
        if self.serving is None:
            return
        params, r, sent = self.serving
        reqs = self.rt.requests
        while self.answered < len(reqs):
            msg = reqs[self.answered]
            assert msg.request is not None
            _, lo, hi = msg.request
            body = self.rt.enc.encode(params[lo:hi], self.rt.encoding)
            sent.append(self._send(msg.sender, r, body, 2, self.answered))
            self.answered += 1

    def _pull_merge(self, params: np.ndarray, msgs: list[Received], cmd: dict[str, Any]) -> np.ndarray:
        """segment_pull of :mod:`tinytwin.algorithms.segments` for this device: per segment
        ``(n_i·w_i + Σ n_p·w_p) / (n_i + Σ n_p)`` over the answers that arrived (float32, pulls
        in the simulator's order: segment, then replica)."""
        bounds = self.rt.bounds
        assert bounds is not None
        answers: dict[tuple[int, int], np.ndarray] = {}
        seen: Counter[int] = Counter()
        for m in msgs:  # take() gives each peer's answers in the order of the requests
            answers[(m.sender, seen[m.sender])] = m.values
            seen[m.sender] += 1
        asked: Counter[int] = Counter()
        per_seg: dict[int, list[tuple[float, np.ndarray]]] = {}
        for seg, peer, weight in cmd.get("pulls", []):
            z = answers.get((int(peer), asked[int(peer)]))
            asked[int(peer)] += 1
            if z is not None:
                per_seg.setdefault(int(seg), []).append((float(weight), z))
        out = params.copy()
        own_w = float(cmd.get("own_weight", 1.0))
        for seg, pulled in sorted(per_seg.items()):
            lo, hi = bounds[seg], bounds[seg + 1]
            out[lo:hi] = self.trainer.pull_merge(params[lo:hi], own_w, pulled)
        return out

    def _merge(
        self, params: np.ndarray, msgs: list[Received], cmd: dict[str, Any], extra: dict[str, Any]
    ) -> np.ndarray:
        name = self.alg["name"]
        tr = self.trainer
        if self.rt.segmented:
            return self._pull_merge(params, msgs, cmd)
        if name in MIXING:
            weights = {int(k): float(v) for k, v in cmd.get("weights", {}).items()}  # none: isolated
            got = [(weights[m.sender], m.values) for m in msgs]
            missing = sum(weights.values()) - sum(w for w, _ in got)
            return tr.mix(params, float(cmd.get("self_weight", 1.0)), got, max(missing, 0.0))
        if name == "gist":
            return self._gist_merge(params, msgs, extra)
        merge = self.alg["merge"]
        if merge == "average":
            return tr.average(params, [m.values for m in msgs])
        if merge == "age":
            params, self.age = tr.age(params, self.age, [(m.values, m.age) for m in msgs])
            return params
        assert self.fifo is not None
        for m in msgs:
            self.fifo.push(m.values)
        return params

    def _gist_merge(self, params: np.ndarray, msgs: list[Received], extra: dict[str, Any]) -> np.ndarray:
        """The simulator's Gist delivery: segments join the FIFO buffer in message order; once it
        holds ``min_received`` the device merges them all (success-weighted: each sender's
        accuracy, its own as the local weight; vanilla: all 1) and clears it."""
        g = self.gist
        assert g is not None
        success = g["merge"] == "success"
        for m in msgs:
            assert m.mask is not None
            self.buffer.append((m.accuracy if success else 1.0, m.mask, m.values))
        extra["gist_buffer"] = len(self.buffer)
        if not msgs or len(self.buffer) < int(g["min_received"]):
            return params
        merged = self.trainer.gist(params, self.accuracy if success else 1.0, list(self.buffer))
        self.buffer.clear()
        self.gist_merges += 1
        extra["gist_merged"] = True
        return merged


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
    rt = PeerRuntime(
        int(cfg["device"]),
        ckey,
        links,
        int(cfg["num_params"]),
        list(cfg["tensor_sizes"]),
        cfg["encoding"],
        with_age=alg["name"] == "gossip" and alg.get("merge") == "age",
        gist=alg["name"] == "gist",
        segment_bounds=alg.get("segment_bounds"),
    )
    # Numpy or firmware (QEMU) training and merging; QEMU is started before any cap (it
    # reserves a large translation buffer) and before the reader thread exists.
    try:
        trainer = make_peer_trainer(cfg, x, y)
    except DeviceFault as fault:
        log(f"device {rt.id}: firmware fault at start-up {fault.kind}: {fault.detail}")
        return FIRMWARE_FAULT_EXIT
    net = PeerNet(int(cfg["max_frame"]))
    warm_blas()  # BLAS's work buffers belong to the baseline, not to the budget (runtime_env)
    try:
        net.connect_coordinator(cfg["host"], int(cfg["port"]))
    except OSError as exc:
        log(f"device {rt.id}: cannot connect to the coordinator: {exc}")
        return NO_COORDINATOR_EXIT
    net.start()
    baseline = vm_data_bytes()
    cap = baseline + int(cfg["mem_budget_bytes"])
    hello = {"pid": os.getpid(), "port": net.port, "vmdata_baseline": baseline, "rlimit_data": cap}
    net.send_coordinator(rt.make(rt.frame.MsgType.HELLO, COORDINATOR_ID, 0, "none", json.dumps(hello).encode()))
    if trainer.caps_process_memory:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    log(
        f"device {rt.id}: pid {os.getpid()} port {net.port}, {len(links)} link keys, {trainer.kind} trainer, "
        f"VmData baseline {baseline} B, RLIMIT_DATA {cap if trainer.caps_process_memory else 'none'} B"
    )
    try:
        return Peer(cfg, rt, net, x, y, initial, trainer).run()
    except DeviceFault as fault:
        log(f"device {rt.id}: round {rt.round}: firmware fault {fault.kind}: {fault.detail}")
        return FIRMWARE_FAULT_EXIT
    finally:
        trainer.close()
        net.close()


def main(argv: list[str] | None = None) -> int:
    return run_main(run, argv, lost_coordinator_exits=True)


if __name__ == "__main__":
    sys.exit(main())
