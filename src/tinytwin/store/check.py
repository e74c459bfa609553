"""Opening a results database to read it, and checking it before anyone trusts it.

Why: ``report`` and ``--resume`` read files that may be truncated, scribbled on, edited by
hand or planted. A reader must never write (no schema creation, no journal files left
behind), and a damaged database must give one line, not a traceback from deep inside a plot.
Everything here reads; :func:`check_store` refuses what the readers downstream cannot handle:
pages that fail SQLite's own check, missing tables or columns, text where numbers belong,
and a ``summary_json`` or class histogram that is not the JSON it should be.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tinytwin.errors import TinyTwinError


class ResultsError(TinyTwinError):
    """A results database that cannot be used as it is: damaged, tampered, read-only or full."""


def connect_read_only(db: Path) -> sqlite3.Connection:
    """A connection that cannot write ``db`` nor leave files beside it.

    A database whose writer closed cleanly has no ``-wal`` file: it is opened ``immutable``
    (no locks, no ``-shm``). One with a ``-wal`` (a run in progress, or killed) is opened
    ``mode=ro``, so the committed rounds in its WAL are seen and a live writer is respected.
    """
    # A writer in WAL mode keeps the -wal file for as long as it is connected (even empty), so
    # "no -wal" means nobody is writing and nothing committed is outside the main file.
    has_wal = db.with_name(db.name + "-wal").exists()
    uri = db.resolve().as_uri() + ("?mode=ro" if has_wal else "?mode=ro&immutable=1")
    try:
        return sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise ResultsError(f"{db.parent}: cannot open {db.name} ({exc})") from None


def expected_columns(schema: str) -> dict[str, dict[str, tuple[str, bool]]]:
    """Table -> column -> (declared type, NOT NULL) of a schema script, via an in-memory database."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(schema)
        tables = [r[0] for r in mem.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: {r[1]: (r[2].upper(), bool(r[3])) for r in mem.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        mem.close()


def check_store(
    conn: sqlite3.Connection, where: Path, schema: str, optional: tuple[str, ...] = (), whole: bool = True
) -> None:
    """Refuse (one :class:`ResultsError` line) a database unfit for the readers of ``schema``.

    Tables in ``optional`` may be absent (e.g. the extra tables of decentralized runs), but
    are checked when present. ``whole``: also check every page and the JSON columns (once per
    database; off when checking a second schema in the same file).
    """
    try:
        _check(conn, where, schema, optional, whole)
    except sqlite3.DatabaseError as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ResultsError(f"{where}: results.db is damaged ({detail}); it cannot be read") from None


def _check(conn: sqlite3.Connection, where: Path, schema: str, optional: tuple[str, ...], whole: bool) -> None:
    if whole:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            detail = " ".join(" ".join(problems).replace("*** in database main ***", "").split())[:160]
            raise ResultsError(f"{where}: results.db is damaged ({detail}); it cannot be read")
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, columns in expected_columns(schema).items():
        if table not in present:
            if table in optional:
                continue
            raise ResultsError(f"{where}: results.db has no {table} table; it is not a complete tinytwin run")
        have = {r[1]: r[2].upper() for r in conn.execute(f"PRAGMA table_info({table})")}
        missing = [c for c in columns if c not in have]
        if missing:
            raise ResultsError(f"{where}: results.db table {table} lacks column {missing[0]}; it was altered")
        for column, (kind, not_null) in columns.items():
            _check_column(conn, where, table, column, kind, not_null)
    if whole:
        _check_json(conn, where, present)


def _check_column(conn: sqlite3.Connection, where: Path, table: str, column: str, kind: str, not_null: bool) -> None:
    allowed = {"INTEGER": ("integer",), "REAL": ("real", "integer"), "TEXT": ("text",), "BLOB": ("blob",)}[kind]
    types = ", ".join(f"'{t}'" for t in (*allowed, *(() if not_null else ("null",))))
    row = conn.execute(
        f"SELECT rowid, typeof({column}) FROM {table} WHERE typeof({column}) NOT IN ({types}) LIMIT 1"
    ).fetchone()
    if row is not None:
        raise ResultsError(
            f"{where}: results.db {table}.{column} holds {row[1]} where {kind.lower()} belongs (row {row[0]}); "
            "the database was altered"
        )


def _check_json(conn: sqlite3.Connection, where: Path, present: set[str]) -> None:
    for (text,) in conn.execute("SELECT summary_json FROM runs WHERE summary_json IS NOT NULL"):
        if not isinstance(_json(text), dict):
            raise ResultsError(f"{where}: results.db runs.summary_json is not a JSON object; the database was altered")
    if "devices" in present:
        for device, text in conn.execute("SELECT device, class_hist_json FROM devices"):
            hist = _json(text)
            if not (isinstance(hist, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in hist)):
                raise ResultsError(
                    f"{where}: results.db devices.class_hist_json of device {device} is not a list of counts"
                )


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None
