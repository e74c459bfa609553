"""Opening a run's results for reading: read-only, and checked before anything trusts it.

Used by ``report``, ``compare`` and the checks before ``--resume``; see :mod:`tinytwin.store.check`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tinytwin.errors import TinyTwinError
from tinytwin.store.db import RunInfo, RunStore
from tinytwin.store.dfl import DFL_SCHEMA
from tinytwin.store.forecast import FORECAST_SCHEMA

DB_NAME = "results.db"


def open_checked(run_dir: Path) -> tuple[RunStore, RunInfo]:
    """Open the run in ``run_dir`` read-only, checked, or raise one line saying what is wrong.

    Read-only (:func:`tinytwin.store.check.connect_read_only`): a reader never writes, so it
    cannot plant tables into some unrelated ``results.db``, nor touch a damaged one. Checked
    (:meth:`RunStore.check`): damaged pages, missing tables, text in numeric columns and bad
    JSON are refused here instead of surfacing as a traceback from a plot.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TinyTwinError(f"{run_dir}: run folder does not exist")
    db = run_dir / DB_NAME
    if not db.is_file():
        raise TinyTwinError(f"{run_dir}: not a tinytwin run folder (no {DB_NAME})")
    store = RunStore(db, read_only=True)
    try:
        try:
            has_runs = store.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise TinyTwinError(f"{run_dir}: {DB_NAME} is not a readable SQLite database ({exc})") from None
        if not has_runs:
            raise TinyTwinError(f"{run_dir}: {DB_NAME} is not a tinytwin results database (no runs table)")
        store.check(optional=("checkpoints",), extra_schema=DFL_SCHEMA + FORECAST_SCHEMA)
        try:
            info = store.run_info()
        except LookupError:
            raise TinyTwinError(f"{run_dir}: {DB_NAME} holds no run") from None
    except BaseException:
        store.close()
        raise
    return store, info
