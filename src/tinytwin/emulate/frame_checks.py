"""The coordinator's side of the device protocol: link keys, frames out, checks of frames in.

:class:`Coordinator` holds no sockets and imports no torch, so the same checks serve the
centralized coordinator (:mod:`tinytwin.emulate.coordinator`), the decentralized one
(metrics and model reports) and the local aggregators of hierarchical runs
(:mod:`tinytwin.emulate.aggregator`), which speak the coordinator's side of the protocol
to their devices and the device's side to the global coordinator. Moved here unchanged
from ``emulate/coordinator.py``, which re-exports it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from tinytwin.emulate.wire_np import COORDINATOR_ID, Rejected, decode_checked, derive_key
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm

__all__ = ["Coordinator"]

log = logging.getLogger("tinytwin.emulate")

# Rejections recorded (event and log line) per round, one by one; beyond this they are counted
# and recorded as one summary line, so a flood of forged frames cannot fill the log or database.
REJECT_EVENTS_PER_ROUND = 20
# Connections that have not yet sent an authentic HELLO, at once (serving._admit decides who goes
# beyond it), so idle or forged connections cannot exhaust the file descriptors.
MAX_UNAUTHENTICATED = 256
# Seconds a new connection may take to send its HELLO before it is closed (slow-loris).
HELLO_TIMEOUT_S = 10.0


class Coordinator:
    """Protocol state and frame checks of the coordinator (usable without sockets)."""

    def __init__(
        self, num_devices: int, run_key: bytes, num_params: int, tensor_sizes: list[int], encoding: str
    ) -> None:
        self.keys = {d: derive_key(run_key, d) for d in range(num_devices)}
        self.guard = fm.ReplayGuard()
        self.nonce = time.time_ns()
        self.n = num_params
        self.tensor_sizes = tensor_sizes
        # Devices that train a sub-model (issue #11): their (parameter count, tensor sizes).
        self.shapes: dict[int, tuple[int, list[int]]] = {}
        self.encoding = encoding
        self.round = 0
        self.expect: set[int] = set()
        self.updates: dict[int, np.ndarray] = {}
        self.update_bytes: dict[int, int] = {}
        self.metrics: dict[int, dict[str, Any]] = {}
        self.rejected: Counter[str] = Counter()
        self.reject_events: list[tuple[int | None, str]] = []
        self.reject_overflow: Counter[str] = Counter()
        # Open connections that have not said an authentic HELLO yet, oldest first: their writers
        # and when they were opened (time.monotonic()).
        self.unauthenticated: OrderedDict[int, tuple[asyncio.StreamWriter, float]] = OrderedDict()
        self.max_unauthenticated = MAX_UNAUTHENTICATED
        self.hello_timeout_s = HELLO_TIMEOUT_S
        # Called with (device, reason) when an expected device's authentic update is refused for
        # its content (NaN, bad payload): it leaves the round's expected set at once, so the round
        # does not wait for its timeout.
        self.on_drop: Callable[[int, str], None] | None = None
        self.max_frame = max(
            fm.frame_size(enc.encoded_size(num_params, encoding, tensor_sizes=tensor_sizes)), 64 * 1024
        )

    def key_for(self, sender: int) -> bytes | None:
        return self.keys.get(sender)

    def make(self, msg_type: fm.MsgType, receiver: int, round_: int, encoding: str, payload: bytes) -> bytes:
        # Nonces follow the wall clock, not a per-process count: a device that an orchestrated run
        # redirects hears the coordinator and then local aggregators (one wire id, several processes),
        # and each must be ahead of the frames it heard before.
        self.nonce = max(self.nonce + 1, time.time_ns())
        return fm.encode_frame(
            fm.Frame(msg_type, COORDINATOR_ID, receiver, round_, encoding, 0, self.nonce, payload), self.keys[receiver]
        )

    def accept(self, data: bytes, conn_device: int | None = None) -> tuple[fm.Frame, Any]:
        """Check one complete frame; return ``(frame, content)`` or raise :class:`Rejected`.

        Changes no state except the replay guard (and only for authentic frames).
        """
        fr = decode_checked(fm, data, self.key_for, self.guard)
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
                n, sizes = self.shapes.get(fr.sender, (self.n, self.tensor_sizes))
                values, _ = enc.decode(fr.payload, fr.encoding, n, tensor_sizes=sizes)
            except ValueError as exc:
                raise Rejected("bad_payload", str(exc), sender=fr.sender) from None
            if not fm.payload_is_finite(values):
                raise Rejected("non_finite", "update contains NaN or Inf", sender=fr.sender)
            return fr, values
        raise Rejected("unexpected_type", f"{t.name} is not sent to the coordinator")

    def handle(self, data: bytes, conn_device: int | None = None) -> tuple[fm.Frame, Any] | None:
        try:
            return self.accept(data, conn_device)
        except Rejected as exc:
            self.note_reject(conn_device, exc.reason, f"{exc.reason}: {exc.detail}")
            if exc.sender is not None and exc.sender in self.expect:
                self.expect.discard(exc.sender)
                if self.on_drop is not None:
                    self.on_drop(exc.sender, exc.reason)
            return None

    def note_reject(self, device: int | None, reason: str, detail: str) -> None:
        """Count a rejection; record it as an event and a log line while this round has had fewer
        than :data:`REJECT_EVENTS_PER_ROUND`, else only count it (summarised by :meth:`drain_rejects`)."""
        self.rejected[reason] += 1
        if len(self.reject_events) < REJECT_EVENTS_PER_ROUND:
            self.reject_events.append((device, detail))
            log.warning("rejected frame (connection of device %s): %s", device, detail)
        else:
            self.reject_overflow[reason] += 1

    def drain_rejects(self) -> list[tuple[int | None, str]]:
        """The rejections recorded since the last call, plus one line summing those only counted."""
        events = self.reject_events
        if self.reject_overflow:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.reject_overflow.items()))
            events.append(
                (None, f"{sum(self.reject_overflow.values())} more rejected ({counts}); not listed one by one")
            )
        self.reject_events, self.reject_overflow = [], Counter()
        return events
