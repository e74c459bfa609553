"""The coordinator side of one TCP connection: read frames, check them, send frames (no torch, no numpy).

Shared by the centralized coordinator (:mod:`tinytwin.emulate.coordinator`), the
decentralized one (:mod:`tinytwin.emulate.dfl_coordinator`), the hierarchical global
coordinator (:mod:`tinytwin.emulate.hier_coordinator`) and the local aggregators
(:mod:`tinytwin.emulate.aggregator`, device side: this module must never import torch).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from tinytwin.emulate.wire_np import Rejected, checked_length
from tinytwin.wire import frame as fm

if TYPE_CHECKING:
    from tinytwin.emulate.frame_checks import Coordinator

__all__ = ["Truncated", "accepted_frames", "read_frame", "send_frame"]


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
    hears of a refused header. The end of the stream ends the iteration."""
    while True:
        try:
            data = await read_frame(reader, coord.max_frame, body_timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except Rejected as exc:
            truncated = isinstance(exc, Truncated)
            coord.rejected[exc.reason] += 1
            coord.reject_events.append(
                (
                    (reject_device or sender)(),
                    "truncated: stream ended inside a frame"
                    if truncated
                    else f"{exc.reason} (header); connection closed",
                )
            )
            if on_reject is not None and not truncated:
                on_reject(sender(), exc)
            return
        got = coord.handle(data, sender())
        if got is not None:
            yield got[0], got[1], len(data)


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
