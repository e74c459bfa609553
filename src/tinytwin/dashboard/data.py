"""Read-only access to one run's ``results.db`` for the dashboard.

Why a separate reader instead of :class:`tinytwin.store.db.RunStore`: ``RunStore`` opens the
file read-write and creates its schema, and a dashboard must never write to a database a
run is writing (or to a copy someone archived read-only). Every connection here is opened
with the SQLite URI ``mode=ro``; a file without any write permission bit and without a
``-wal`` beside it is opened ``immutable=1`` as well, so SQLite does not even create the
``-shm``/``-wal`` side files in a read-only folder. WAL mode lets these readers run
alongside the writer without blocking it.

Every failure (not SQLite, corrupt pages, a schema from a newer tinytwin) surfaces as a
:class:`RunDataError` with one sentence that the page shows as-is.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from tinytwin.store.db import DEVICE_ROUND_COLUMNS, ROUND_COLUMNS
from tinytwin.version import __version__

DB_NAME = "results.db"
REQUIRED: dict[str, tuple[str, ...]] = {
    "runs": ("run_id", "name", "twin", "seed", "status", "rounds_planned", "rounds_done", "summary_json", "version"),
    "devices": ("device", "grp", "profile", "link", "num_samples"),
    "rounds": ROUND_COLUMNS,
    "device_rounds": DEVICE_ROUND_COLUMNS,
}
SPREAD_COLUMNS = ("round", "acc_mean", "acc_min", "acc_max", "consensus_distance")
TRAINING = ("ok", "straggler")  # device_rounds statuses of a device that trained this round
NOT_FAILED = (*TRAINING, "idle")


def json_safe(x: Any) -> Any:
    """NaN and infinities are not JSON; a gap (null) is the honest rendering in a chart or table."""
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


class RunDataError(Exception):
    """A run database the dashboard cannot show; the message is one sentence for the page."""


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in str(v).split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def connect_ro(db: Path) -> sqlite3.Connection:
    """A read-only connection (see the module docstring for why ``immutable`` is sometimes added)."""
    db = Path(db)
    uri = db.resolve().as_uri() + "?mode=ro"
    try:
        frozen = not (db.stat().st_mode & 0o222) and not db.with_name(db.name + "-wal").exists()
        conn = sqlite3.connect(uri + ("&immutable=1" if frozen else ""), uri=True, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # forces the header to be read
    except sqlite3.DatabaseError as exc:
        raise RunDataError(f"{db}: not a readable SQLite database ({exc})") from None
    except OSError as exc:
        raise RunDataError(f"{db}: cannot open ({exc.strerror or exc})") from None
    return conn


class RunDB:
    """One run database opened read-only, with the queries the dashboard pages need."""

    def __init__(self, db: Path) -> None:
        self.path = Path(db)
        self.conn = connect_ro(self.path)
        try:
            self._check_schema()
            row = self.conn.execute("SELECT run_id FROM runs ORDER BY started_at LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise RunDataError(f"{self.path}: database is corrupt or unreadable ({exc})") from None
        except RunDataError:
            self.close()
            raise
        if row is None:
            self.close()
            raise RunDataError(f"{self.path}: holds no run yet")
        self.run_id: str = row[0]
        self._data_version: int | None = None

    # ---- checks ---------------------------------------------------------------------
    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})").fetchall()}

    def _check_schema(self) -> None:
        """Refuse databases whose tables lack the columns read here, saying whether a newer tinytwin wrote them."""
        missing: list[str] = []
        for table, cols in REQUIRED.items():
            have = self._columns(table)
            missing += [f"{table}.{c}" for c in cols if c not in have]
        if not missing:
            return
        if "runs.run_id" in missing:
            raise RunDataError(f"{self.path}: not a tinytwin results database (no runs table)")
        user_version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        written_by = "?"
        if "runs.version" not in missing:
            got = self.conn.execute("SELECT version FROM runs LIMIT 1").fetchone()
            written_by = got[0] if got else "?"
        newer = user_version > 0 or (written_by != "?" and _version_tuple(written_by) > _version_tuple(__version__))
        if newer:
            raise RunDataError(
                f"{self.path}: written by a newer tinytwin (version {written_by}, schema {user_version}); "
                f"this tinytwin {__version__} cannot read it (missing {', '.join(missing[:4])}) — upgrade tinytwin"
            )
        raise RunDataError(f"{self.path}: not a tinytwin results database (missing {', '.join(missing[:4])})")

    def _q(self, sql: str, *args: Any) -> list[tuple]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise RunDataError(f"{self.path}: database is corrupt or unreadable ({exc})") from None

    def changed(self) -> bool:
        """True when another connection committed since the last call (``PRAGMA data_version``); cheap."""
        version = self._q("PRAGMA data_version")[0][0]
        changed = version != self._data_version
        self._data_version = version
        return changed

    # ---- reads ----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The ``runs`` row, plus the device count and groups."""
        row = self._q(
            "SELECT run_id, name, twin, seed, status, rounds_planned, rounds_done, started_at, finished_at,"
            " summary_json, version FROM runs WHERE run_id = ?",
            self.run_id,
        )[0]
        keys = ("run_id", "name", "twin", "seed", "status", "rounds_planned", "rounds_done", "started_at")
        out = dict(zip(keys, row[:8]))
        out["finished_at"], out["version"] = row[8], row[10]
        try:
            out["summary"] = json.loads(row[9]) if row[9] else {}
        except ValueError:
            out["summary"] = {}
        groups = self._q("SELECT grp, count(*) FROM devices WHERE run_id = ? GROUP BY grp ORDER BY grp", self.run_id)
        out["groups"] = {g: n for g, n in groups}
        out["num_devices"] = sum(out["groups"].values())
        return out

    def rounds(self, after: int = 0) -> dict[str, list[Any]]:
        """Rounds later than ``after``, column by column (compact JSON, easy to append to a chart)."""
        rows = self._q(
            f"SELECT {', '.join(ROUND_COLUMNS)} FROM rounds WHERE run_id = ? AND round > ? ORDER BY round",
            self.run_id,
            after,
        )
        return {c: [r[i] for r in rows] for i, c in enumerate(ROUND_COLUMNS)}

    def spread(self, after: int = 0) -> dict[str, list[Any]] | None:
        """Decentralized/hierarchical runs: accuracy of the devices' own models (mean, min, max) per round.

        None for runs without the ``round_metrics`` table (centralized runs)."""
        if not self._columns("round_metrics") >= set(SPREAD_COLUMNS):
            return None
        rows = self._q(
            f"SELECT {', '.join(SPREAD_COLUMNS)} FROM round_metrics WHERE run_id = ? AND round > ? ORDER BY round",
            self.run_id,
            after,
        )
        return {c: [r[i] for r in rows] for i, c in enumerate(SPREAD_COLUMNS)}

    def fleet_counts(self, num_devices: int) -> dict[str, Any]:
        """Devices online / training / failed / not taking part in the latest round."""
        last = self._q("SELECT max(round) FROM device_rounds WHERE run_id = ?", self.run_id)[0][0]
        if last is None:
            return {"round": None, "total": num_devices, "online": 0, "training": 0, "failed": 0, "excluded": 0}
        by_status = dict(
            self._q(
                "SELECT status, count(*) FROM device_rounds WHERE run_id = ? AND round = ? GROUP BY status",
                self.run_id,
                last,
            )
        )
        online = sum(by_status.values())
        return {
            "round": last,
            "total": num_devices,
            "online": online,
            "training": sum(n for s, n in by_status.items() if s in TRAINING),
            "failed": sum(n for s, n in by_status.items() if s not in NOT_FAILED),
            "excluded": max(num_devices - online, 0),
            "by_status": by_status,
        }

    def spec_yaml(self) -> str:
        return self._q("SELECT spec_yaml FROM runs WHERE run_id = ?", self.run_id)[0][0]

    def device_row_count(self) -> int:
        return self._q("SELECT count(*) FROM device_rounds WHERE run_id = ?", self.run_id)[0][0]

    def class_histograms(self) -> dict[str, list[Any]]:
        """Training samples per class of every device (the data partition), for a heat map."""
        rows = self._q("SELECT device, class_hist_json FROM devices WHERE run_id = ? ORDER BY device", self.run_id)
        try:
            return {"device": [r[0] for r in rows], "z": [json.loads(r[1]) for r in rows]}
        except ValueError as exc:
            raise RunDataError(f"{self.path}: unreadable class histogram ({exc})") from None

    def devices(self) -> list[dict[str, Any]]:
        rows = self._q(
            "SELECT device, grp, profile, link, num_samples FROM devices WHERE run_id = ? ORDER BY device", self.run_id
        )
        return [dict(zip(("device", "group", "profile", "link", "num_samples"), r)) for r in rows]

    def device_totals(self) -> dict[int, dict[str, Any]]:
        """Per device over all finished rounds: energy, bytes, time, rounds trained, latest status and accuracy."""
        rows = self._q(
            "SELECT device, sum(energy_j), sum(bytes_up) + sum(bytes_down), sum(compute_s + up_s + down_s),"
            " sum(status IN ('ok', 'straggler')), count(*), max(round) FROM device_rounds WHERE run_id = ?"
            " GROUP BY device",
            self.run_id,
        )
        out = {
            d: {"energy_j": e, "bytes": b, "busy_s": t, "rounds_trained": k, "rounds_online": n, "last_round": lr}
            for d, e, b, t, k, n, lr in rows
        }
        latest = self._q(
            "SELECT device, status, accuracy FROM device_rounds WHERE run_id = ? AND round ="
            " (SELECT max(round) FROM device_rounds WHERE run_id = ?)",
            self.run_id,
            self.run_id,
        )
        for d, status, acc in latest:
            out.setdefault(d, {})["status"] = status
            out[d]["accuracy"] = acc
        return out

    def device_rounds(self, device: int) -> dict[str, list[Any]]:
        """One device's rows, column by column, for its panel."""
        rows = self._q(
            f"SELECT {', '.join(DEVICE_ROUND_COLUMNS)} FROM device_rounds WHERE run_id = ? AND device = ? ORDER BY round",
            self.run_id,
            device,
        )
        return {c: [r[i] for r in rows] for i, c in enumerate(DEVICE_ROUND_COLUMNS)}

    def close(self) -> None:
        self.conn.close()


def find_runs(root: Path, depth: int = 2) -> list[Path]:
    """Run folders (those holding a ``results.db``) at or below ``root``, down to ``depth`` levels."""
    root = Path(root)
    found: list[Path] = []
    if (root / DB_NAME).is_file():
        found.append(root)
    if depth <= 0:
        return found
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return found
    for e in entries:
        if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
            found.extend(find_runs(Path(e.path), depth - 1))
    return found


def db_signature(run_dir: Path) -> tuple[int, int, int]:
    """Cheap change stamp of a run database: mtimes of the file and its WAL, and the WAL size."""
    db = run_dir / DB_NAME
    try:
        st = db.stat()
    except OSError:
        return (0, 0, 0)
    try:
        wal = db.with_name(DB_NAME + "-wal").stat()
        return (st.st_mtime_ns, wal.st_mtime_ns, wal.st_size)
    except OSError:
        return (st.st_mtime_ns, 0, 0)
