"""The sweep index: one SQLite file per sweep folder (``index.db``).

Why one index: a sweep of hundreds of runs must be queryable without opening every run
folder, and resumable after a kill. Only the sweep's driver process writes it, one
transaction per finished run, so a kill loses at most the runs in flight; ``status``
tells a resumed sweep which runs to skip.

Tables:

- ``sweep``  one row: the base experiment (YAML), its folder, the grid, seeds, twin, options
- ``runs``   one row per run: id, grid cell, overrides (JSON), seed, status
  (pending/running/complete/failed), the run's final metrics, and the error of a failed run
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tinytwin.errors import TinyTwinError
from tinytwin.sweep.grid import RunPlan, SweepPlan

INDEX_NAME = "index.db"

#: Final metrics copied from a run's summary into the index.
METRICS = ("final_accuracy", "best_accuracy", "rounds", "sim_time_s", "bytes_up", "bytes_down", "energy_j_total")
#: Columns that are the same whenever the same sweep is run again (wall time and timestamps are not).
DETERMINISTIC = ("run_id", "cell", "replicate", "overrides_json", "seed", "status", *METRICS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sweep (
    name TEXT NOT NULL,
    base_yaml TEXT NOT NULL,
    base_dir TEXT NOT NULL,
    grid_json TEXT NOT NULL,
    seeds INTEGER NOT NULL,
    twin TEXT NOT NULL,
    options_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    cell INTEGER NOT NULL,
    replicate INTEGER NOT NULL,
    label TEXT NOT NULL,
    overrides_json TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    {", ".join(f"{m} REAL" for m in METRICS)},
    wall_time_s REAL,
    error TEXT,
    finished_at REAL
);
"""


class SweepIndex:
    """The ``index.db`` of one sweep folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(str(self.path))
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)
        self.conn.commit()

    @classmethod
    def open_existing(cls, sweep_dir: Path) -> SweepIndex:
        """Open a sweep folder's index, or one line saying the folder is not a sweep."""
        db = Path(sweep_dir) / INDEX_NAME
        if not db.is_file():
            raise TinyTwinError(f"{sweep_dir} is not a tinytwin sweep folder (no {INDEX_NAME})")
        return cls(db)

    def create(self, plan: SweepPlan, runs: Sequence[RunPlan], twin: str, options: Mapping[str, Any]) -> None:
        """Write the sweep row and every run as ``pending``, in one transaction."""
        with self.conn:
            self.conn.execute(
                "INSERT INTO sweep VALUES (?,?,?,?,?,?,?,?)",
                (
                    plan.name,
                    yaml.safe_dump(plan.base, sort_keys=False),
                    str(plan.base_dir),
                    json.dumps(plan.grid),
                    plan.seeds,
                    twin,
                    json.dumps(dict(options)),
                    time.time(),
                ),
            )
            self.conn.executemany(
                "INSERT INTO runs (run_id, cell, replicate, label, overrides_json, seed, status)"
                " VALUES (?,?,?,?,?,?,'pending')",
                [(r.run_id, r.cell, r.replicate, r.label, json.dumps(r.overrides), r.seed) for r in runs],
            )

    def meta(self) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT name, base_yaml, base_dir, grid_json, seeds, twin, options_json FROM sweep"
        ).fetchone()
        if row is None:
            raise TinyTwinError(f"{self.path} holds no sweep (it was not created by `tinytwin sweep`)")
        name, base_yaml, base_dir, grid_json, seeds, twin, options_json = row
        return {
            "plan": SweepPlan(yaml.safe_load(base_yaml), Path(base_dir), json.loads(grid_json), int(seeds)),
            "twin": twin,
            "options": json.loads(options_json),
        }

    def plans(self, statuses: Sequence[str] | None = None) -> list[RunPlan]:
        """The runs (optionally only those with one of ``statuses``), in run-id order."""
        query = "SELECT run_id, cell, replicate, overrides_json, seed FROM runs"
        args: tuple[Any, ...] = ()
        if statuses:
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            args = tuple(statuses)
        rows = self.conn.execute(query + " ORDER BY run_id", args).fetchall()
        return [RunPlan(rid, c, r, json.loads(ov), seed) for rid, c, r, ov, seed in rows]

    def mark(self, run_ids: Sequence[str], status: str) -> None:
        with self.conn:
            self.conn.executemany("UPDATE runs SET status = ? WHERE run_id = ?", [(status, r) for r in run_ids])

    def record(self, result: Mapping[str, Any]) -> None:
        """Store one finished (or failed) run: its status, final metrics, wall time and error."""
        summary = result.get("summary") or {}
        values = [summary.get(m) for m in METRICS]
        with self.conn:
            self.conn.execute(
                f"UPDATE runs SET status = ?, {', '.join(f'{m} = ?' for m in METRICS)}, wall_time_s = ?,"
                " error = ?, finished_at = ? WHERE run_id = ?",
                (
                    result["status"],
                    *values,
                    summary.get("wall_time_s"),
                    result.get("error"),
                    time.time(),
                    result["run_id"],
                ),
            )

    def rows(self, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        cols = ", ".join(columns) if columns else "*"
        cur = self.conn.execute(f"SELECT {cols} FROM runs ORDER BY run_id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())

    def close(self) -> None:
        self.conn.close()
