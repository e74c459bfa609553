"""A peer's frame checks and round bookkeeping, without sockets (testable in-process):
:class:`PeerRuntime` authenticates every frame with the key of the sender's link and checks
replay, receiver, connection, message type, round, whether that sender was expected, payload
and finiteness, and keeps the round's inbox (:class:`Received`) for the peer process
(:mod:`tinytwin.emulate.peer`). numpy only, never torch."""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytwin.algorithms import gist_np
from tinytwin.emulate.device import log
from tinytwin.emulate.peer_net import COORDINATOR_CONN
from tinytwin.emulate.wire_np import COORDINATOR_ID, Rejected, decode_checked, load_wire

CONTROL_COMMANDS = ("directory", "round", "peer_down", "stop", "resume")
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


Exchanged = tuple[np.ndarray, list[Received], list[int], float]
"""A round's exchange: (merged model, messages received, peers given up on, wall seconds waited)."""


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
            if cmd["cmd"] == "round" and int(cmd["wire"] if "wire" in cmd else cmd.get("round", -1)) <= self.round:
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
