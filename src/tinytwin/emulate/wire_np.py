"""The wire format in device processes: TCP stream framing, keys and frame checks.

``tinytwin.wire.encoding`` and ``tinytwin.wire.frame`` are numpy-only (the torch batch
version of the decoder lives in ``tinytwin.wire.roundtrip``), so a device process uses the
project's single definition of the encoders without loading torch.
"""

from __future__ import annotations

import hashlib
import hmac
import types
from typing import Any

import tinytwin.wire.encoding as encoding
import tinytwin.wire.frame as frame

COORDINATOR_ID = 0xFFFFFFFF
"""Sender / receiver id of the coordinator (device ids are 0..D-1)."""


def load_wire() -> tuple[types.ModuleType, types.ModuleType]:
    """``(tinytwin.wire.frame, tinytwin.wire.encoding)``: both import numpy, not torch.

    They are imported when this module is, i.e. before a device caps its memory."""
    return frame, encoding


def derive_key(run_key: bytes, device: int) -> bytes:
    """The key of the link between the coordinator and ``device`` (both directions sign with it)."""
    return hmac.new(run_key, b"tinytwin-emulate-device-%d" % device, hashlib.sha256).digest()


class Rejected(Exception):
    """A received frame was refused; ``reason`` is a stable code (FrameError reasons plus
    ``wrong_receiver``, ``wrong_sender``, ``stale_round``, ``unexpected_type``,
    ``bad_payload``, ``non_finite``, ``oversized``, ``not_expected``, ``no_hello``)."""

    def __init__(self, reason: str, detail: str = "", sender: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.sender = sender  # an authentic update refused for its content: its sender's round is over
        super().__init__(f"{reason}: {detail}" if detail else reason)


def read_frame_blocking(sock: Any, max_frame: int) -> bytes:
    """Read one length-prefixed frame from a blocking socket.

    Raises :class:`Rejected` for a bad header or a frame longer than ``max_frame`` (the
    stream cannot be resynchronised after that: the caller closes the connection) and
    ``ConnectionError`` at end of stream.
    """
    frame, _ = load_wire()
    header = recv_exact(sock, frame.HEADER_SIZE)
    total = checked_length(frame, header, max_frame)
    return header + recv_exact(sock, total - frame.HEADER_SIZE)


def decode_checked(frame: Any, data: bytes, key_for: Any, guard: Any) -> Any:
    """Decode and authenticate one frame (``frame``: the wire frame module) and pass it through
    the replay ``guard``; :class:`Rejected` for whatever the frame layer refuses."""
    try:
        fr = frame.decode_frame(data, key_for)
        guard.check(fr.sender, fr.nonce)
    except frame.FrameError as exc:
        raise Rejected(exc.reason, exc.detail) from None
    return fr


def checked_length(frame: Any, header: bytes, max_frame: int) -> int:
    """The whole frame's length from its header (``frame``: the wire frame module);
    :class:`Rejected` for a bad header or a frame longer than ``max_frame``."""
    try:
        total = frame.frame_length(header)
    except frame.FrameError as exc:
        raise Rejected(exc.reason, exc.detail) from None
    if total > max_frame:
        raise Rejected("oversized", f"frame of {total} bytes > {max_frame}")
    return total


def recv_exact(sock: Any, n: int) -> bytes:
    """Exactly ``n`` bytes from a blocking socket; ``ConnectionError`` at end of stream."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)
