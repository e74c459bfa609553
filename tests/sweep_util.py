"""Helpers for sweep tests: the tiny quickstart sweep's arguments and reading a sweep's index."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from conftest import REPO

QUICKSTART = REPO / "examples" / "quickstart.yaml"
#: The quickstart kept tiny: 2 rounds, 5 devices (each run is well under a second once warm).
TINY = ["--set", "rounds=2", "--set", "fleet.groups.0.count=5"]
GRID = ["--grid", "algorithm.lr=0.05,0.1", "--grid", "partition.alpha=0.1,0.5"]
DETERMINISTIC = (
    "run_id",
    "cell",
    "replicate",
    "overrides_json",
    "seed",
    "status",
    "final_accuracy",
    "best_accuracy",
    "rounds",
    "sim_time_s",
    "bytes_up",
    "bytes_down",
    "energy_j_total",
)


def only_sweep(out: Path) -> Path:
    (sweep_dir,) = out.iterdir()
    return sweep_dir


def index_rows(sweep_dir: Path, columns: tuple[str, ...] = DETERMINISTIC) -> list[dict[str, Any]]:
    conn = sqlite3.connect(sweep_dir / "index.db")
    try:
        cur = conn.execute(f"SELECT {', '.join(columns)} FROM runs ORDER BY run_id")
        return [dict(zip(columns, row)) for row in cur.fetchall()]
    finally:
        conn.close()


def complete_count(sweep_dir: Path) -> int:
    db = sweep_dir / "index.db"
    if not db.is_file():
        return 0
    try:
        conn = sqlite3.connect(db, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'complete'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the table is not there yet
        return 0


def run_spec(run_dir: Path) -> dict[str, Any]:
    """The effective spec and seed a run folder's database recorded."""
    import yaml

    conn = sqlite3.connect(run_dir / "results.db")
    try:
        seed, spec_yaml, started = conn.execute("SELECT seed, spec_yaml, started_at FROM runs").fetchone()
    finally:
        conn.close()
    return {"seed": seed, "spec": yaml.safe_load(spec_yaml), "started_at": started}


def overrides(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["overrides_json"])
