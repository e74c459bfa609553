"""Shared helpers of the emulation-twin tests: the quickstart spec and a run's stored rows."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "examples" / "quickstart.yaml"
LOSSLESS = ["fleet.groups.0.count=10", "fleet.groups.0.link_overrides.loss=0",
            "fleet.groups.0.link_overrides.header_bytes=0"]


@contextmanager
def _opened(run_dir: Path) -> Iterator[tuple[RunStore, Any]]:
    store = RunStore(run_dir / "results.db")
    try:
        yield store, store.run_info()
    finally:
        store.close()


def stored_rows(run_dir: Path, with_info: bool = False):
    """(rounds, device_rounds, events) of the run in ``run_dir``; ``with_info``: its run info first."""
    with _opened(run_dir) as (store, info):
        rows = store.rounds(info.run_id), store.device_rounds(info.run_id), store.events(info.run_id)
        return (info, *rows) if with_info else rows


def stored_tables(run_dir: Path, ledger: bool = False):
    """(info, rounds, device_rounds, events, round_metrics, device_metrics[, ledger]) of a
    decentralized or hierarchical run in ``run_dir``."""
    with _opened(run_dir) as (store, info):
        rid = info.run_id
        tables = (info, store.rounds(rid), store.device_rounds(rid), store.events(rid),
                  dfl_store.round_metrics(store, rid), dfl_store.device_metrics(store, rid))
        return tables + (dfl_store.ledger(store, rid),) if ledger else tables
