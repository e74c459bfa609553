"""The emulator's measured wall-clock times, next to the cost model's figures.

``device_rounds`` of an emulated run holds the cost model's compute / link times and
energy (the same figures the simulator writes, so ``tinytwin compare`` puts both twins
side by side); what the emulation actually took on the wall clock goes to one extra table,
``emulate_device_rounds`` (the common schema of :mod:`tinytwin.store.db` is unchanged):

- ``wall_down_s``    coordinator starts the model's send (shaping included) → the device has all of it
- ``wall_compute_s`` device has the model → its update is encoded (training + compute pacing)
- ``wall_train_s``   the training alone (CPU seconds of numpy on this machine)
- ``wall_up_s``      device starts its upload (shaping included) → the coordinator has all of it
- ``wall_total_s``   the round's start → the coordinator has the update
- ``shaped_down_s`` / ``shaped_up_s``  of which the userspace shaper slept
- ``rss_kb``         the device process's resident memory after training
- ``insns``          firmware devices: instructions of the local training counted by the firmware
                     (QEMU ``-icount``); ``firmware_compute_s`` = insns x CPI / clock, beside
                     ``device_rounds.compute_s`` (the cost model's FLOP-based time)
- ``qemu_rss_kb``    firmware devices: the QEMU instance's resident memory

Cross-process intervals use ``time.monotonic()``, one clock for every process on the host
(network namespaces do not change it). Rows go into the round's own transaction and are
exported to ``csv/emulate_device_rounds.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinytwin.store.db import RunStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS emulate_device_rounds (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    device INTEGER NOT NULL,
    wall_down_s REAL,
    wall_compute_s REAL,
    wall_train_s REAL,
    wall_up_s REAL,
    wall_total_s REAL,
    shaped_down_s REAL,
    shaped_up_s REAL,
    rss_kb INTEGER,
    insns INTEGER,
    firmware_compute_s REAL,
    qemu_rss_kb INTEGER,
    PRIMARY KEY (run_id, round, device)
);
"""
COLUMNS = (
    "round",
    "device",
    "wall_down_s",
    "wall_compute_s",
    "wall_train_s",
    "wall_up_s",
    "wall_total_s",
    "shaped_down_s",
    "shaped_up_s",
    "rss_kb",
    "insns",
    "firmware_compute_s",
    "qemu_rss_kb",
)


def ensure_table(store: RunStore) -> None:
    store.conn.executescript(SCHEMA)
    store.conn.commit()


def write_round(
    store: RunStore,
    run_id: str,
    measured: Sequence[Mapping[str, Any]],
    round_row: Mapping[str, Any],
    device_rows: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    checkpoint: Mapping[str, Any] | None,
    battery: Sequence[tuple[int, int, float, float]] = (),
) -> None:
    """Commit the measured rows together with the round (one transaction, as :mod:`tinytwin.store.dfl` does)."""
    conn = store.conn
    try:
        conn.executemany(
            f"INSERT OR REPLACE INTO emulate_device_rounds (run_id, {', '.join(COLUMNS)}) "
            f"VALUES (?{', ?' * len(COLUMNS)})",
            [(run_id, *[m.get(c) for c in COLUMNS]) for m in measured],
        )
    except BaseException:
        conn.rollback()
        raise
    store.write_round(run_id, round_row, device_rows, events, checkpoint, battery=battery)


def rows(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    cur = store.conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM emulate_device_rounds WHERE run_id = ? ORDER BY round, device", (run_id,)
    )
    return [dict(zip(COLUMNS, r)) for r in cur.fetchall()]


def export_csv(store: RunStore, run_id: str, out_dir: Path) -> Path:
    from tinytwin.report.export import atomic_write, csv_table

    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write(out_dir / "emulate_device_rounds.csv", csv_table(rows(store, run_id), COLUMNS))
