"""The coordinator side of one TCP connection: read frames, check them, send frames (no torch, no numpy).

Shared by the centralized coordinator (:mod:`tinytwin.emulate.coordinator`), the
decentralized one (:mod:`tinytwin.emulate.dfl_coordinator`), the hierarchical global
coordinator (:mod:`tinytwin.emulate.hier_coordinator`) and the local aggregators
(:mod:`tinytwin.emulate.aggregator`, device side: this module must never import torch).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from tinytwin.emulate.wire_np import Rejected, checked_length
from tinytwin.wire import frame as fm

if TYPE_CHECKING:
    from tinytwin.emulate.frame_checks import Coordinator

__all__ = ["Truncated", "accepted_frames", "read_frame", "send_frame"]

# A connection without a HELLO younger than this is never closed to make room for a new one.
ADMIT_GRACE_S = 1.0


class Truncated(Rejected):
    """The stream ended (or stalled past the timeout) inside a frame's body."""

    def __init__(self) -> None:
        super().__init__("truncated", "stream ended inside a frame")


async def read_frame(reader: asyncio.StreamReader, max_frame: int, body_timeout: float | None = None) -> bytes:
    """One complete frame from a stream; :class:`Rejected` for a bad or oversized header (the
    stream cannot be resynchronised: the caller closes it), ``IncompleteReadError`` at the end.

    With ``body_timeout``, a body that does not arrive in that many seconds (or a stream that
    ends inside it) is :class:`Truncated`; without, the body's end of stream is ``IncompleteReadError``."""
    header = await reader.readexactly(fm.HEADER_SIZE)
    total = checked_length(fm, header, max_frame)
    if body_timeout is None:
        return header + await reader.readexactly(total - fm.HEADER_SIZE)
    try:
        return header + await asyncio.wait_for(reader.readexactly(total - fm.HEADER_SIZE), body_timeout)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        raise Truncated() from None


async def accepted_frames(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    coord: Coordinator,
    sender: Callable[[], int | None],
    *,
    on_reject: Callable[[int | None, Rejected], None] | None = None,
    reject_device: Callable[[], int | None] | None = None,
    body_timeout: float | None = None,
) -> AsyncIterator[tuple[Any, Any, int]]:
    """``(frame, content, size)`` of every frame of one connection that ``coord``'s checks accept.

    ``sender()`` is the connection's device so far (None before its HELLO). A frame the checks
    refuse is counted by ``coord`` and skipped; a refused header or a truncated body is counted
    (device ``reject_device()``, by default ``sender()``) and ends the stream — ``on_reject``
    hears of a refused header. The end of the stream ends the iteration.

    Until the connection has said an authentic HELLO it is *unauthenticated*: at most
    ``coord.max_unauthenticated`` such connections are served at once (see :func:`_admit`), each
    must send its first frame within ``coord.hello_timeout_s``, and its first refused frame closes
    it — so idle, slow or forged connections cannot exhaust descriptors or memory, however many
    there are. A handler cancelled at shutdown ends quietly (asyncio would log every one)."""
    pending = coord.unauthenticated
    if not _admit(coord, reader, writer):
        return
    authenticated = False
    try:
        while True:
            try:
                if authenticated:
                    data = await read_frame(reader, coord.max_frame, body_timeout)
                else:
                    data = await asyncio.wait_for(
                        read_frame(reader, coord.max_frame, body_timeout), coord.hello_timeout_s
                    )
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                return
            except TimeoutError:
                coord.note_reject(
                    None, "hello_timeout", f"hello_timeout: no HELLO within {coord.hello_timeout_s:g} s; closed"
                )
                return
            except Rejected as exc:
                truncated = isinstance(exc, Truncated)
                coord.note_reject(
                    (reject_device or sender)(),
                    exc.reason,
                    "truncated: stream ended inside a frame"
                    if truncated
                    else f"{exc.reason} (header); connection closed",
                )
                if on_reject is not None and not truncated and authenticated:
                    on_reject(sender(), exc)
                return
            got = coord.handle(data, sender())
            if got is None:
                if not authenticated:  # nobody authentic to keep listening to
                    return
                continue
            if not authenticated:  # an authentic HELLO (the only frame accepted before one)
                authenticated = True
                pending.pop(id(reader), None)
            yield got[0], got[1], len(data)
    finally:
        if not authenticated:
            pending.pop(id(reader), None)


def _admit(coord: Coordinator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Take a new connection into ``coord.unauthenticated``, or refuse it when that is full.

    When full, the oldest waiting connection is closed to make room if it has waited longer
    than :data:`ADMIT_GRACE_S` (an idle one: a device says HELLO as soon as it connects); if every
    waiting connection is younger, the new one is refused instead, so a burst of connections
    cannot push out a device whose HELLO is already on its way."""
    pending = coord.unauthenticated
    now = time.monotonic()
    if len(pending) >= coord.max_unauthenticated:
        oldest_writer, opened = next(iter(pending.values()))
        if now - opened < ADMIT_GRACE_S:
            coord.note_reject(None, "connection_limit", "connection_limit: too many connections without a HELLO")
            writer.transport.abort()
            return False
        pending.popitem(last=False)
        oldest_writer.transport.abort()  # its read ends as if the peer had gone; its server closes the rest
        coord.note_reject(None, "connection_limit", "connection_limit: idle connection without a HELLO closed")
    pending[id(reader)] = (writer, now)
    return True


async def send_frame(writer: asyncio.StreamWriter | None, data: bytes) -> bool:
    """Write one frame and drain; False if there is no connection or it is gone."""
    if writer is None:
        return False
    try:
        writer.write(data)
        await writer.drain()
        return True
    except ConnectionError:
        return False
