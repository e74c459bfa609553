"""Shared helpers of the emulation-twin tests: the quickstart spec and a run's stored rows."""

from __future__ import annotations

from pathlib import Path

from tinytwin.store.db import RunStore

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "examples" / "quickstart.yaml"
LOSSLESS = ["fleet.groups.0.count=10", "fleet.groups.0.link_overrides.loss=0",
            "fleet.groups.0.link_overrides.header_bytes=0"]


def stored_rows(run_dir: Path):
    """(rounds, device_rounds, events) of the run in ``run_dir``."""
    store = RunStore(run_dir / "results.db")
    try:
        info = store.run_info()
        return store.rounds(info.run_id), store.device_rounds(info.run_id), store.events(info.run_id)
    finally:
        store.close()
