"""Results tables of decentralized and hierarchical runs, next to the common ones.

New tables only (the common schema in :mod:`tinytwin.store.db` is unchanged):

- ``round_metrics``   per round: accuracy of the devices' own models on the shared test set
                      (mean, min, max, std), mean test loss, consensus distance, the global
                      model's accuracy (hierarchical), connected components, messages
- ``device_metrics``  per device per round: its model's test accuracy and loss, distance to
                      the mean model, learning rate, local rounds done, messages and airtime
- ``ledger``          hierarchical cost ledger: per round, level and link, bytes and cost

They are written in the same transaction as the round's ``rounds`` row and checkpoint
(:func:`write_round`), so a crash never leaves one without the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tinytwin.store.db import RunStore

DFL_SCHEMA = """
CREATE TABLE IF NOT EXISTS round_metrics (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    acc_mean REAL,
    acc_min REAL,
    acc_max REAL,
    acc_std REAL,
    loss_mean REAL,
    consensus_distance REAL,
    global_accuracy REAL,
    components INTEGER,
    messages INTEGER NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS device_metrics (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    device INTEGER NOT NULL,
    test_accuracy REAL,
    test_loss REAL,
    distance_to_mean REAL,
    lr REAL,
    local_rounds INTEGER NOT NULL,
    messages_sent INTEGER NOT NULL,
    messages_received INTEGER NOT NULL,
    airtime_s REAL NOT NULL,
    PRIMARY KEY (run_id, round, device)
);
CREATE TABLE IF NOT EXISTS ledger (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    level TEXT NOT NULL,
    src TEXT NOT NULL,
    dst TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    cost REAL NOT NULL
);
"""

ROUND_METRIC_COLUMNS = (
    "round",
    "acc_mean",
    "acc_min",
    "acc_max",
    "acc_std",
    "loss_mean",
    "consensus_distance",
    "global_accuracy",
    "components",
    "messages",
)
DEVICE_METRIC_COLUMNS = (
    "round",
    "device",
    "test_accuracy",
    "test_loss",
    "distance_to_mean",
    "lr",
    "local_rounds",
    "messages_sent",
    "messages_received",
    "airtime_s",
)
LEDGER_COLUMNS = ("round", "level", "src", "dst", "bytes", "cost")


def ensure_tables(store: RunStore) -> None:
    store.conn.executescript(DFL_SCHEMA)
    store.conn.commit()


def write_round(
    store: RunStore,
    run_id: str,
    round_row: Mapping[str, Any],
    device_rows: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    checkpoint: Mapping[str, Any] | None,
    round_metrics: Mapping[str, Any],
    device_metrics: Sequence[Mapping[str, Any]],
    ledger: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Commit a round of a decentralized/hierarchical run in one transaction.

    The extra rows are inserted first (Python's sqlite3 opens the transaction implicitly);
    :meth:`RunStore.write_round` then adds the common rows and commits them all together,
    or rolls all of them back.
    """
    conn = store.conn
    try:
        conn.execute(
            f"INSERT OR REPLACE INTO round_metrics (run_id, {', '.join(ROUND_METRIC_COLUMNS)}) "
            f"VALUES (?{', ?' * len(ROUND_METRIC_COLUMNS)})",
            (run_id, *[round_metrics.get(c) for c in ROUND_METRIC_COLUMNS]),
        )
        conn.executemany(
            f"INSERT OR REPLACE INTO device_metrics (run_id, {', '.join(DEVICE_METRIC_COLUMNS)}) "
            f"VALUES (?{', ?' * len(DEVICE_METRIC_COLUMNS)})",
            [(run_id, *[r.get(c) for c in DEVICE_METRIC_COLUMNS]) for r in device_metrics],
        )
        conn.executemany(
            f"INSERT INTO ledger (run_id, {', '.join(LEDGER_COLUMNS)}) VALUES (?{', ?' * len(LEDGER_COLUMNS)})",
            [(run_id, *[r.get(c) for c in LEDGER_COLUMNS]) for r in ledger],
        )
    except BaseException:
        conn.rollback()
        raise
    store.write_round(run_id, round_row, device_rows, events, checkpoint)


def _dicts(store: RunStore, query: str, *args: Any) -> list[dict[str, Any]]:
    cur = store.conn.execute(query, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def has_tables(store: RunStore) -> bool:
    row = store.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='round_metrics'").fetchone()
    return row is not None


def round_metrics(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    if not has_tables(store):
        return []
    return _dicts(
        store, f"SELECT {', '.join(ROUND_METRIC_COLUMNS)} FROM round_metrics WHERE run_id = ? ORDER BY round", run_id
    )


def device_metrics(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    if not has_tables(store):
        return []
    return _dicts(
        store,
        f"SELECT {', '.join(DEVICE_METRIC_COLUMNS)} FROM device_metrics WHERE run_id = ? ORDER BY round, device",
        run_id,
    )


def ledger(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    if not has_tables(store):
        return []
    return _dicts(store, f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger WHERE run_id = ? ORDER BY rowid", run_id)
