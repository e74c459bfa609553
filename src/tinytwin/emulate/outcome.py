"""How an emulated run ended: a run in which no device's work ever counted (every device
failed, or every update was lost on the way) learned nothing, and says so instead of
finishing with a normal-looking summary. One rule for centralized, decentralized and
hierarchical runs: every family's rounds table counts, per round, the devices whose work
arrived (``completed``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tinytwin.store.db import RunStore

QUIET_STATUSES = ("idle", "link_down", "ok")
"""Device-round statuses that are no failure (not selected, offline by the timeline, succeeded)."""


def learned_nothing(store: RunStore, run_id: str) -> str | None:
    """Why the run learned nothing (one sentence), or None when some device's work counted."""
    rounds = store.rounds(run_id)
    if not rounds or any(int(r["completed"] or 0) for r in rounds):
        return None
    failures = Counter(d["status"] for d in store.device_rounds(run_id) if d["status"] not in QUIET_STATUSES)
    how = ", ".join(f"{kind} {n}" for kind, n in failures.most_common())
    return (
        f"nothing was learned: no device's update counted in any of the {len(rounds)} rounds"
        + (f" (failed device-rounds: {how})" if how else "")
        + "; see the events table and emulate/logs/"
    )


def finish(store: RunStore, run_id: str, summary: dict[str, Any]) -> None:
    """Close the run in the store: ``complete``, or ``failed`` with ``summary["failure"]``
    saying why (the CLI then exits non-zero)."""
    failure = learned_nothing(store, run_id)
    if failure is not None:
        summary["failure"] = failure
    store.finish_run(run_id, "failed" if failure else "complete", summary)


def finish_peer_run(
    store: RunStore, run_id: str, run_dir: Path, summary: dict[str, Any], report: bool
) -> tuple[Path, dict[str, Any]]:
    """A decentralized or hierarchical emulation's end: the run complete (or failed, when it
    learned nothing), its store closed,
    the report's extras written (``report``)."""
    finish(store, run_id, summary)
    store.close()
    if report:
        from tinytwin.report.dfl import write_dfl_extras

        write_dfl_extras(run_dir)
    return run_dir, summary
