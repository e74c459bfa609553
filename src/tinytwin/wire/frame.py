"""The binary frame: one format for every message between devices, aggregators and coordinator.

Layout (all integers little-endian; full specification in ``docs/protocol.md``)::

    offset size field
         0    2 magic        b"TT"
         2    1 version      u8, = 1
         3    1 msg_type     u8, MsgType
         4    4 sender       u32, device id of the sender
         8    4 receiver     u32, device id of the receiver
        12    4 round        u32, training round
        16    1 encoding     u8, payload encoding code (ENCODING_CODES)
        17    1 flags        u8, reserved (0 in version 1; covered by the tag)
        18    8 nonce        u64, strictly increasing per sender (replay protection)
        26    4 payload_len  u32, <= MAX_PAYLOAD
        30    payload_len    payload
         ..   32 tag         HMAC-SHA256(sender's key, header + payload)

The emulator sends these frames over TCP; the simulator never builds them but counts
:func:`frame_size` of :func:`tinytwin.wire.encoding.encoded_size` bytes per message, so
both twins account the same traffic.

Receiving, in order: :func:`decode_frame` (structure, then the tag), then
:meth:`ReplayGuard.check` (only after the tag is verified, so forged frames cannot
advance a sender's nonce), then the receiver's own checks (``receiver`` is itself, the
round is current) and, for model vectors, :func:`payload_is_finite` on the decoded
values.
"""

from __future__ import annotations

import hashlib
import hmac
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from tinytwin.wire.encoding import ENCODINGS

__all__ = [
    "ENCODING_CODES",
    "FRAME_OVERHEAD",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_PAYLOAD",
    "TAG_SIZE",
    "VERSION",
    "Frame",
    "FrameError",
    "MsgType",
    "ReplayGuard",
    "decode_frame",
    "encode_frame",
    "frame_length",
    "frame_size",
    "payload_is_finite",
]

MAGIC = b"TT"
VERSION = 1
_HEADER = struct.Struct("<2sBBIIIBBQI")
HEADER_SIZE: int = _HEADER.size  # 30
TAG_SIZE = 32
FRAME_OVERHEAD = HEADER_SIZE + TAG_SIZE  # 62
MAX_PAYLOAD = 16 * 2**20

ENCODING_CODES: dict[str, int] = {"none": 0, "float32": 1, "float16": 2, "int8": 3, "bitmap": 4}
"""Wire code of each payload encoding; ``"none"`` is opaque bytes (e.g. UTF-8 JSON)."""
_ENCODING_NAMES = {code: name for name, code in ENCODING_CODES.items()}
assert set(ENCODING_CODES) == {"none", *ENCODINGS}

_U32 = 2**32 - 1
_U64 = 2**64 - 1


class MsgType(IntEnum):
    """What a frame carries."""

    HELLO = 1  # a device announces itself (join)
    MODEL = 2  # global model, server/aggregator -> device
    UPDATE = 3  # client update, device -> server/aggregator
    SEGMENT = 4  # model segment exchanged by gossip (decentralized learning)
    METRICS = 5  # evaluation / telemetry
    CONTROL = 6  # coordinator commands (start round, configuration)
    BYE = 7  # a device leaves


class FrameError(ValueError):
    """A received frame is rejected. ``reason`` is a stable machine-readable code:

    ``truncated``, ``bad_magic``, ``bad_version``, ``unknown_type``, ``unknown_encoding``,
    ``too_large``, ``length_mismatch``, ``unknown_sender``, ``bad_tag``, ``replayed``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Frame:
    """One message. Field ranges are checked on construction (:class:`ValueError`).

    ``encoding`` names the payload encoding (:data:`tinytwin.wire.encoding.ENCODINGS`) or
    ``"none"`` for opaque bytes. ``nonce`` must strictly increase per sender over the
    sender's lifetime (keep a counter across restarts, or start from a clock).
    """

    msg_type: MsgType
    sender: int
    receiver: int
    round: int
    encoding: str
    flags: int
    nonce: int
    payload: bytes

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "msg_type", MsgType(self.msg_type))
        except ValueError:
            raise ValueError(f"unknown msg_type {self.msg_type!r}") from None
        for name, limit in (("sender", _U32), ("receiver", _U32), ("round", _U32), ("flags", 255), ("nonce", _U64)):
            value = getattr(self, name)
            try:
                value = operator.index(value)  # accepts numpy integers, rejects floats
            except TypeError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None
            if not 0 <= value <= limit:
                raise ValueError(f"{name} must be in [0, {limit}], got {value}")
            object.__setattr__(self, name, value)
        if self.encoding not in ENCODING_CODES:
            raise ValueError(f"unknown encoding {self.encoding!r}; known: {', '.join(ENCODING_CODES)}")
        object.__setattr__(self, "payload", bytes(self.payload))
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds MAX_PAYLOAD={MAX_PAYLOAD}")


def frame_size(payload_len: int) -> int:
    """Bytes on the wire for a frame with a ``payload_len``-byte payload."""
    if not 0 <= payload_len <= MAX_PAYLOAD:
        raise ValueError(
            f"payload_len must be in [0, MAX_PAYLOAD={MAX_PAYLOAD}], got {payload_len}; "
            "a larger model does not fit in one frame"
        )
    return FRAME_OVERHEAD + payload_len


def _tag(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()


def encode_frame(frame: Frame, key: bytes) -> bytes:
    """Serialise ``frame`` and append its HMAC-SHA256 tag under the sender's ``key``.

    ``key`` must be non-empty; 32 random bytes are recommended.
    """
    if not key:
        raise ValueError("an HMAC key must be non-empty bytes")
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        int(frame.msg_type),
        frame.sender,
        frame.receiver,
        frame.round,
        ENCODING_CODES[frame.encoding],
        frame.flags,
        frame.nonce,
        len(frame.payload),
    )
    signed = header + frame.payload
    return signed + _tag(key, signed)


def msg_type_of(header: bytes) -> int:
    """The message type field of a frame header (unchecked: callers route, they do not trust)."""
    return int(_HEADER.unpack_from(header)[2])


def frame_length(header: bytes) -> int:
    """Validate a frame's first :data:`HEADER_SIZE` bytes and return the whole frame's length.

    A stream reader reads the header, calls this, then reads the rest; a bad header is
    rejected before a (possibly huge) payload is read. Raises :class:`FrameError`.
    """
    if len(header) < HEADER_SIZE:
        raise FrameError("truncated", f"need {HEADER_SIZE} header bytes, got {len(header)}")
    magic, version, msg_type, _, _, _, encoding, _, _, payload_len = _HEADER.unpack_from(header)
    if magic != MAGIC:
        raise FrameError("bad_magic", f"expected {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise FrameError("bad_version", f"expected {VERSION}, got {version}")
    if msg_type not in MsgType._value2member_map_:
        raise FrameError("unknown_type", f"msg_type {msg_type}")
    if encoding not in _ENCODING_NAMES:
        raise FrameError("unknown_encoding", f"encoding code {encoding}")
    if payload_len > MAX_PAYLOAD:
        raise FrameError("too_large", f"payload_len {payload_len} > MAX_PAYLOAD {MAX_PAYLOAD}")
    return FRAME_OVERHEAD + payload_len


def decode_frame(data: bytes, key_for_sender: Callable[[int], bytes | None]) -> Frame:
    """Parse and authenticate one complete frame.

    Checks, in order: header (:func:`frame_length`), total length (fewer bytes than the
    header announces: ``truncated``; more: ``length_mismatch``), the sender's key
    (``key_for_sender(sender)`` returning ``None`` or empty: ``unknown_sender``), and the
    tag, compared in constant time (``bad_tag``). Replay is *not* checked here: pass the
    result to :meth:`ReplayGuard.check`.

    Raises:
        FrameError: with ``reason`` naming the first failed check.
    """
    buf = bytes(data)
    total = frame_length(buf[:HEADER_SIZE])
    if len(buf) < total:
        raise FrameError("truncated", f"header announces {total} bytes, got {len(buf)}")
    if len(buf) > total:
        raise FrameError("length_mismatch", f"header announces {total} bytes, got {len(buf)}")
    _, _, msg_type, sender, receiver, rnd, encoding, flags, nonce, _ = _HEADER.unpack_from(buf)
    key = key_for_sender(sender)
    if not key:
        raise FrameError("unknown_sender", f"no key for sender {sender}")
    signed, tag = buf[: total - TAG_SIZE], buf[total - TAG_SIZE :]
    if not hmac.compare_digest(_tag(key, signed), tag):
        raise FrameError("bad_tag", f"HMAC mismatch for sender {sender}")
    return Frame(
        msg_type=MsgType(msg_type),
        sender=sender,
        receiver=receiver,
        round=rnd,
        encoding=_ENCODING_NAMES[encoding],
        flags=flags,
        nonce=nonce,
        payload=buf[HEADER_SIZE : total - TAG_SIZE],
    )


class ReplayGuard:
    """Per-receiver replay protection: each sender's nonces must strictly increase.

    Call :meth:`check` only for frames whose tag verified. Reordered frames are rejected
    too (TCP preserves order, so that only happens under attack or a sender bug).
    """

    def __init__(self) -> None:
        self._last: dict[int, int] = {}

    def check(self, sender: int, nonce: int) -> None:
        """Accept and record ``nonce``, or raise ``FrameError("replayed")`` if it is not
        greater than the last nonce accepted from ``sender``."""
        last = self._last.get(sender)
        if last is not None and nonce <= last:
            raise FrameError("replayed", f"sender {sender} nonce {nonce} <= last accepted {last}")
        self._last[sender] = nonce

    def last_nonce(self, sender: int) -> int | None:
        """The last accepted nonce of ``sender`` (``None`` if none yet)."""
        return self._last.get(sender)


def payload_is_finite(values: np.ndarray) -> bool:
    """True if every decoded value is finite.

    Receivers drop model payloads containing NaN or Inf (a diverged or malicious client)
    before aggregation; aggregators treat non-finite input as a bug.
    """
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.inexact):
        return True
    return bool(np.isfinite(arr).all())
