"""A forecasting run's folder, like every other run's: results database, CSV, JSON, report.

Written once the whole file has run (a forecasting run has no rounds to resume), so a failed or
refused run leaves no half-written folder. ``tinytwin compare`` reads these folders
(:func:`tinytwin.graph.report.compare_forecasts`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinytwin.engines.runner import new_run_dir
from tinytwin.report.export import atomic_write, csv_table
from tinytwin.spec.forecast import ForecastSpec
from tinytwin.store.db import RunStore
from tinytwin.store.files import private_dirs
from tinytwin.store.forecast import (
    COST_COLUMNS,
    CURVE_COLUMNS,
    METRIC_COLUMNS,
    cost_rows,
    curve_rows,
    metric_rows,
    write_forecast,
)
from tinytwin.store.reader import DB_NAME
from tinytwin.version import __version__


def forecast_summary(result: dict[str, Any], twin: str) -> dict[str, Any]:
    """The ``runs`` row's summary: per setup its test metrics and the cost model's totals."""
    return {
        "task": "forecasting",
        "twin": twin,
        "epochs": result["spec"]["train"]["epochs"],
        "cloudlets": len(result["owned_per_cloudlet"]),
        "setups": {
            s: {
                "test": r["test"],
                "best_epoch": r["best_epoch"],
                "modelled_time_s": r["fleet"]["time_s"],
                "energy_j": r["fleet"]["energy_j"],
                "link_bytes": r["fleet"]["bytes"],
                "train_memory_bytes": r["fleet"]["train_memory_bytes"],
                "wall_s": r["wall_s"],
            }
            for s, r in result["setups"].items()
        },
        "persistence": result["persistence"],
        "fleet": {k: next(iter(result["setups"].values()))["fleet"][k] for k in ("profile", "link", "server_profile")},
    }


def record_forecast(result: dict[str, Any], spec: ForecastSpec, spec_yaml: str, out: Path, twin: str) -> Path:
    """Write the run folder under ``out``; return it."""
    from tinytwin.graph.report import write_forecast_report

    run_dir = new_run_dir(out, spec.name)
    private_dirs(run_dir, run_dir / "csv")
    store = RunStore(run_dir / DB_NAME)
    try:
        run_id = run_dir.name
        store.create_run(run_id, spec.name, twin, spec.seed, spec_yaml, spec.train.epochs, __version__)
        write_forecast(store, run_id, result)
        store.finish_run(run_id, "complete", forecast_summary(result, twin))
    finally:
        store.close()
    atomic_write(run_dir / "result.json", json.dumps(result, indent=1))
    for name, columns, rows in (
        ("forecast_metrics", METRIC_COLUMNS, metric_rows(result)),
        ("forecast_curve", CURVE_COLUMNS, curve_rows(result)),
        ("forecast_costs", COST_COLUMNS, cost_rows(result)),
    ):
        atomic_write(run_dir / "csv" / f"{name}.csv", csv_table(rows, columns))
    write_forecast_report(run_dir)
    return run_dir
