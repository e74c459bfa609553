"""SQLite results store.

Why SQLite: one file per run, readable by any tool, and transactional — each round is
committed in one transaction together with the checkpoint needed to continue from it, so
a run killed at any moment keeps every finished round and can be resumed exactly.

Schema (see docs/results.md):

- ``runs``          one row per run: spec, seed, twin, status (running/complete/incomplete/failed)
- ``devices``       one row per device: group, profile, link, sample count, class histogram
- ``rounds``        one row per finished round: accuracy, loss, time, bytes, energy. Time is
  named for what it is: ``sim_time_s`` is the modelled time (the cost model's clock: the
  simulator's virtual clock, and the same model's figures for the rounds an emulation ran),
  ``wall_time_s`` the round's measured wall-clock seconds (the emulation's start-up, outside
  any round, is in its summary's ``emulate.elapsed_wall_s``)
- ``device_rounds`` one row per device per round: status, times, bytes, energy, loss
- ``events``        dropouts, stragglers, joins, leaves, failures, refusals
- ``checkpoints``   the latest state needed to resume (global model, optimizer state)
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinytwin.store.check import ResultsError, check_store, connect_read_only, expected_columns
from tinytwin.store.checkpoint import CheckpointFormatError, decode, encode
from tinytwin.store.checkpoint_files import blob_for_row, blob_from_row, prune_files

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    twin TEXT NOT NULL,
    seed INTEGER NOT NULL,
    spec_yaml TEXT NOT NULL,
    status TEXT NOT NULL,
    rounds_planned INTEGER NOT NULL,
    rounds_done INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    finished_at REAL,
    summary_json TEXT,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    run_id TEXT NOT NULL,
    device INTEGER NOT NULL,
    grp TEXT NOT NULL,
    profile TEXT NOT NULL,
    link TEXT NOT NULL,
    num_samples INTEGER NOT NULL,
    class_hist_json TEXT NOT NULL,
    PRIMARY KEY (run_id, device)
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    sim_time_s REAL NOT NULL,
    duration_s REAL NOT NULL,
    selected INTEGER NOT NULL,
    completed INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    stragglers INTEGER NOT NULL,
    train_loss REAL,
    test_accuracy REAL,
    test_loss REAL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    energy_j REAL NOT NULL,
    wall_time_s REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS device_rounds (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    device INTEGER NOT NULL,
    status TEXT NOT NULL,
    num_samples INTEGER NOT NULL,
    compute_s REAL NOT NULL,
    up_s REAL NOT NULL,
    down_s REAL NOT NULL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    packets_lost INTEGER NOT NULL,
    energy_j REAL NOT NULL,
    train_loss REAL,
    accuracy REAL,
    PRIMARY KEY (run_id, round, device)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    sim_time_s REAL NOT NULL,
    device INTEGER,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS battery_rounds (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    device INTEGER NOT NULL,
    charge_j REAL NOT NULL,
    capacity_j REAL NOT NULL,
    PRIMARY KEY (run_id, round, device)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    state BLOB NOT NULL
);
"""

ROUND_COLUMNS = (
    "round",
    "sim_time_s",
    "duration_s",
    "selected",
    "completed",
    "dropped",
    "stragglers",
    "train_loss",
    "test_accuracy",
    "test_loss",
    "bytes_up",
    "bytes_down",
    "energy_j",
    "wall_time_s",
)
DEVICE_ROUND_COLUMNS = (
    "round",
    "device",
    "status",
    "num_samples",
    "compute_s",
    "up_s",
    "down_s",
    "bytes_up",
    "bytes_down",
    "packets_lost",
    "energy_j",
    "train_loss",
    "accuracy",
)
EVENT_COLUMNS = ("round", "sim_time_s", "device", "kind", "detail")


@dataclass(frozen=True)
class DeviceColumns:
    """One round's ``device_rounds`` rows as columns: each of ``DEVICE_ROUND_COLUMNS`` to a list
    of plain Python values (``None`` for NULL), all lists equally long.

    Why columns: an engine with 10^4 devices builds them with array operations, and SQLite takes
    them in one ``executemany``; a dict per device, built and then taken apart again, was about
    a sixth of a round's time at 10 000 devices."""

    columns: Mapping[str, Sequence[Any]]

    def __len__(self) -> int:
        return len(self.columns["device"])

    def records(self, run_id: str) -> Iterator[tuple[Any, ...]]:
        """The rows as ``(run_id, *DEVICE_ROUND_COLUMNS)`` tuples."""
        return zip([run_id] * len(self), *(self.columns[c] for c in DEVICE_ROUND_COLUMNS), strict=True)


@dataclass(frozen=True)
class RunInfo:
    """The ``runs`` row of a store."""

    run_id: str
    name: str
    twin: str
    seed: int
    spec_yaml: str
    status: str
    rounds_planned: int
    rounds_done: int
    summary: dict[str, Any]


class RunStore:
    """One run's database. Every write of a round is one transaction.

    ``read_only=True`` opens it for readers (report, compare, the checks before a resume): no
    schema is created and nothing is written, not even journal files.
    """

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            self.conn = connect_read_only(self.path)
            return
        with writing(self.path):
            self.conn = sqlite3.connect(str(self.path))
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.executescript(SCHEMA)
                self.conn.commit()
            except BaseException:
                self.conn.close()
                raise

    def check(self, optional: tuple[str, ...] = (), extra_schema: str = "") -> None:
        """Refuse (one line) a damaged or altered database; see :mod:`tinytwin.store.check`.

        ``extra_schema``: more tables to check when present (decentralized runs' own tables)."""
        check_store(self.conn, self.path.parent, SCHEMA, optional)
        if extra_schema:
            tables = tuple(expected_columns(extra_schema))
            check_store(self.conn, self.path.parent, extra_schema, optional=tables, whole=False)

    # ---- writing -------------------------------------------------------------------
    def create_run(
        self, run_id: str, name: str, twin: str, seed: int, spec_yaml: str, rounds_planned: int, version: str
    ) -> None:
        with writing(self.path), self.conn:
            self.conn.execute(
                "INSERT INTO runs (run_id, name, twin, seed, spec_yaml, status, rounds_planned,"
                " rounds_done, started_at, version) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, name, twin, seed, spec_yaml, "running", rounds_planned, 0, time.time(), version),
            )

    def add_devices(self, run_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        with writing(self.path), self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO devices VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        run_id,
                        r["device"],
                        r["group"],
                        r["profile"],
                        r["link"],
                        r["num_samples"],
                        json.dumps(list(map(int, r["class_hist"]))),
                    )
                    for r in rows
                ],
            )

    def write_round(
        self,
        run_id: str,
        round_row: Mapping[str, Any],
        device_rows: Sequence[Mapping[str, Any]] | DeviceColumns,
        events: Sequence[Mapping[str, Any]],
        checkpoint: Mapping[str, Any] | None,
        battery: Sequence[tuple[int, int, float, float]] = (),
    ) -> None:
        """Commit one finished round, its per-device rows, events, battery charges ``(round,
        device, charge_j, capacity_j)`` and the resume checkpoint atomically."""
        stored = None
        if checkpoint is not None:  # a large one is written to its file before the transaction
            stored = blob_for_row(self.path.parent, run_id, int(round_row["round"]), _to_blob(checkpoint))
        with writing(self.path), self.conn:
            self.conn.execute(
                f"INSERT OR REPLACE INTO rounds (run_id, {', '.join(ROUND_COLUMNS)}) "
                f"VALUES (?{', ?' * len(ROUND_COLUMNS)})",
                (run_id, *[round_row.get(c) for c in ROUND_COLUMNS]),
            )
            self.conn.executemany(
                f"INSERT OR REPLACE INTO device_rounds (run_id, {', '.join(DEVICE_ROUND_COLUMNS)}) "
                f"VALUES (?{', ?' * len(DEVICE_ROUND_COLUMNS)})",
                device_rows.records(run_id)
                if isinstance(device_rows, DeviceColumns)
                else [(run_id, *[r.get(c) for c in DEVICE_ROUND_COLUMNS]) for r in device_rows],
            )
            self._insert_events(run_id, events)
            self.conn.executemany(
                "INSERT OR REPLACE INTO battery_rounds VALUES (?,?,?,?,?)", [(run_id, *row) for row in battery]
            )
            if stored is not None:
                self.conn.execute(
                    "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?)", (run_id, int(round_row["round"]), stored)
                )
            self.conn.execute("UPDATE runs SET rounds_done = ? WHERE run_id = ?", (int(round_row["round"]), run_id))
        if stored is not None:
            prune_files(self.path.parent, run_id, stored)

    def add_events(self, run_id: str, events: Sequence[Mapping[str, Any]]) -> None:
        with writing(self.path), self.conn:
            self._insert_events(run_id, events)

    def _insert_events(self, run_id: str, events: Sequence[Mapping[str, Any]]) -> None:
        self.conn.executemany(
            f"INSERT INTO events (run_id, {', '.join(EVENT_COLUMNS)}) VALUES (?{', ?' * len(EVENT_COLUMNS)})",
            [(run_id, *[e.get(c) for c in EVENT_COLUMNS]) for e in events],
        )

    def finish_run(self, run_id: str, status: str, summary: Mapping[str, Any]) -> None:
        with writing(self.path), self.conn:
            self.conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, summary_json = ? WHERE run_id = ?",
                (status, time.time(), json.dumps(summary), run_id),
            )

    def set_status(self, run_id: str, status: str) -> None:
        with writing(self.path), self.conn:
            self.conn.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    # ---- reading -------------------------------------------------------------------
    def run_info(self, run_id: str | None = None) -> RunInfo:
        query = (
            "SELECT run_id, name, twin, seed, spec_yaml, status, rounds_planned, rounds_done, summary_json FROM runs"
        )
        row = (
            self.conn.execute(query + " WHERE run_id = ?", (run_id,)).fetchone()
            if run_id
            else self.conn.execute(query + " ORDER BY started_at LIMIT 1").fetchone()
        )
        if row is None:
            raise LookupError(f"no run in {self.path}")
        summary = json.loads(row[8]) if row[8] else {}
        return RunInfo(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], summary=summary)

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        return self._dicts(f"SELECT {', '.join(ROUND_COLUMNS)} FROM rounds WHERE run_id = ? ORDER BY round", run_id)

    def device_rounds(self, run_id: str) -> list[dict[str, Any]]:
        return self._dicts(
            f"SELECT {', '.join(DEVICE_ROUND_COLUMNS)} FROM device_rounds WHERE run_id = ? ORDER BY round, device",
            run_id,
        )

    def battery_rounds(self, run_id: str) -> list[dict[str, Any]]:
        """Each battery device's charge after each round (empty for runs without batteries and
        for results files written before batteries existed)."""
        try:
            return self._dicts(
                "SELECT round, device, charge_j, capacity_j FROM battery_rounds WHERE run_id = ? ORDER BY round, device",
                run_id,
            )
        except sqlite3.OperationalError:
            return []

    def devices(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._dicts(
            "SELECT device, grp AS 'group', profile, link, num_samples, class_hist_json FROM devices"
            " WHERE run_id = ? ORDER BY device",
            run_id,
        )
        for r in rows:
            r["class_hist"] = json.loads(r.pop("class_hist_json"))
        return rows

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return self._dicts(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE run_id = ? ORDER BY rowid", run_id)

    def checkpoint(self, run_id: str) -> tuple[int, dict[str, Any]] | None:
        """The last committed round and its state; a checkpoint that is not plain data (a pickle,
        a damaged blob) is refused with one line and never executed."""
        row = self.conn.execute("SELECT round, state FROM checkpoints WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        try:
            if not isinstance(row[1], bytes) or isinstance(row[0], bool) or not isinstance(row[0], int):
                raise CheckpointFormatError("the checkpoint row has the wrong column types")
            return int(row[0]), _from_blob(blob_from_row(self.path.parent, row[1]))
        except CheckpointFormatError as exc:
            raise ResultsError(f"{self.path}: cannot resume: {exc}; start the run again") from None

    def _dicts(self, query: str, *args: Any) -> list[dict[str, Any]]:
        cur = self.conn.execute(query, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn SQLite's write failures into one line naming the run folder and what to do.

    The transaction that failed is rolled back by SQLite, so every round committed before it
    stays, and the run resumes once the cause is gone.
    """
    try:
        yield
    except sqlite3.OperationalError as exc:
        folder, text = path.parent, str(exc)
        if "full" in text:
            raise ResultsError(
                f"{folder}: the disk is full ({text}); free some space there, then finish the run with --resume {folder}"
            ) from None
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            raise ResultsError(
                f"{folder} is not writable ({text}); make it writable, or copy the run folder somewhere writable"
            ) from None
        raise ResultsError(f"{folder}: cannot write results.db ({text})") from None
    except sqlite3.DatabaseError as exc:
        raise ResultsError(f"{path.parent}: results.db is damaged ({exc}); it cannot be written") from None


def open_store(path: Path) -> RunStore:
    """Open (creating if needed) the results database at ``path``."""
    return RunStore(path)


def _to_blob(state: Mapping[str, Any]) -> bytes:
    return encode(state)


def _from_blob(blob: bytes) -> dict[str, Any]:
    return decode(blob)
