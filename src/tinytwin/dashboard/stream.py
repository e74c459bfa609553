"""Server-sent events: push new rounds and run-list changes to the page as they are committed.

Why SSE and polling of the database rather than hooks in the engines: the dashboard must
follow runs started by any process (a `tinytwin run` in another terminal, an emulation, a
sweep) without those knowing it exists. Each stream therefore holds its own read-only
connection and asks SQLite ``PRAGMA data_version`` every ``POLL_S`` — a counter that moves
only when another connection commits, costing microseconds — and only then queries the
rounds after the last one it sent. The browser receives deltas, never the whole run again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from anyio import to_thread

from tinytwin.dashboard.catalog import RunCatalog
from tinytwin.dashboard.data import RunDataError, RunDB, json_safe

POLL_S = 0.2  # one data_version query per stream per poll: cheap; sets the update latency (≈ POLL_S / 2 on average)
RUNS_EVERY_S = 1.0  # rescans of the folder for new runs
HEARTBEAT_S = 15.0  # a comment line keeps proxies and the browser from timing the stream out


def sse(event: str, data: Any) -> str:
    """One SSE message; ``data`` is JSON on one line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n"


def run_delta(db: RunDB, after: int) -> dict[str, Any] | None:
    """New rounds after ``after`` plus the run's status and fleet counts, or None if nothing was committed."""
    if not db.changed():
        return None
    info = db.info()
    rounds = db.rounds(after)
    return json_safe(
        {
            "rounds": rounds,
            "spread": db.spread(after),
            "status": info["status"],
            "rounds_done": info["rounds_done"],
            "rounds_planned": info["rounds_planned"],
            "counts": db.fleet_counts(info["num_devices"]),
            "sent_at": time.time(),
        }
    )


async def events(catalog: RunCatalog, key: str | None, after: int, stopping: Callable[[], bool]) -> AsyncIterator[str]:
    """The event stream of one page: ``runs`` when the list changes, ``rounds`` deltas of run ``key``."""
    db: RunDB | None = None
    runs_sig: tuple | None = None
    next_scan = next_beat = 0.0
    try:
        if key is not None:
            try:
                db = await to_thread.run_sync(catalog.open, key)
            except RunDataError as exc:
                yield sse("problem", {"error": str(exc)})
        while not stopping():
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + RUNS_EVERY_S
                sig = await to_thread.run_sync(catalog.signature)
                if sig != runs_sig:
                    runs_sig = sig
                    yield sse("runs", json_safe(await to_thread.run_sync(catalog.listing)))
            if db is not None:
                try:
                    delta = await to_thread.run_sync(run_delta, db, after)
                except RunDataError as exc:
                    catalog.warn_once(str(exc))
                    yield sse("problem", {"error": str(exc)})
                    db.close()
                    db = None
                    delta = None
                if delta is not None:
                    if delta["rounds"]["round"]:
                        after = delta["rounds"]["round"][-1]
                    yield sse("rounds", delta)
            if now >= next_beat:
                next_beat = now + HEARTBEAT_S
                yield ": keep-alive\n\n"
            await asyncio.sleep(POLL_S)
    finally:
        if db is not None:
            db.close()
