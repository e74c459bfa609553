"""Results tables of forecasting runs (``tinytwin forecast``), next to the common ones.

A forecasting file trains several setups (centralized, traditional FL, server-free FL, gossip)
on one sensor graph; its run folder holds one ``runs`` row (its summary names the task) and:

- ``forecast_metrics``  per setup, horizon and cloudlet (NULL: every kept sensor): test MAE,
                        RMSE and WMAPE of the best validation epoch's models; setup
                        ``persistence`` is the last-value baseline
- ``forecast_curve``    per setup and epoch: training loss, validation MAE / RMSE / WMAPE at the
                        first horizon, cumulative training FLOPs, wall seconds
- ``forecast_costs``    per setup and cloudlet (NULL: the server): the cost model's seconds,
                        bytes and joules over the run (``graph/fleet_costs.py``)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinytwin.store.db import RunStore, writing

FORECAST_SCHEMA = """
CREATE TABLE IF NOT EXISTS forecast_metrics (
    run_id TEXT NOT NULL,
    setup TEXT NOT NULL,
    horizon TEXT NOT NULL,
    cloudlet INTEGER,
    mae REAL NOT NULL,
    rmse REAL NOT NULL,
    wmape REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS forecast_curve (
    run_id TEXT NOT NULL,
    setup TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    train_loss REAL NOT NULL,
    val_mae REAL NOT NULL,
    val_rmse REAL NOT NULL,
    val_wmape REAL NOT NULL,
    train_flops REAL NOT NULL,
    wall_s REAL NOT NULL,
    PRIMARY KEY (run_id, setup, epoch)
);
CREATE TABLE IF NOT EXISTS forecast_costs (
    run_id TEXT NOT NULL,
    setup TEXT NOT NULL,
    cloudlet INTEGER,
    compute_s REAL NOT NULL,
    up_s REAL NOT NULL,
    down_s REAL NOT NULL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    energy_j REAL NOT NULL
);
"""
METRIC_COLUMNS = ("setup", "horizon", "cloudlet", "mae", "rmse", "wmape")
CURVE_COLUMNS = ("setup", "epoch", "train_loss", "val_mae", "val_rmse", "val_wmape", "train_flops", "wall_s")
COST_COLUMNS = ("setup", "cloudlet", "compute_s", "up_s", "down_s", "bytes_up", "bytes_down", "energy_j")


def metric_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``forecast_metrics`` rows of a forecasting result (whole graph, per cloudlet, persistence)."""
    rows = []
    tests = [(s, r["test"], r["per_cloudlet"]) for s, r in result["setups"].items()]
    for setup, test, per_cloudlet in [*tests, ("persistence", result["persistence"], [])]:
        rows += [{"setup": setup, "horizon": h, "cloudlet": None, **m} for h, m in test.items()]
        for c in per_cloudlet:
            rows += [{"setup": setup, "horizon": h, "cloudlet": c["cloudlet"], **c[h]} for h in test]
    return rows


def curve_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for setup, r in result["setups"].items():
        for p in r["curve"]:
            first = next(iter(p["val"].values()))
            rows.append(
                {
                    "setup": setup,
                    "epoch": p["epoch"],
                    "train_loss": p["train_loss"],
                    "val_mae": first["mae"],
                    "val_rmse": first["rmse"],
                    "val_wmape": first["wmape"],
                    "train_flops": p["train_flops"],
                    "wall_s": p["wall_s"],
                }
            )
    return rows


def cost_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for setup, r in result["setups"].items():
        f = r["fleet"]
        rows += [{"setup": setup, **c} for c in f["per_cloudlet"]]
        if f["server"]:
            rows.append(
                {
                    "setup": setup,
                    "cloudlet": None,
                    "compute_s": f["server"]["compute_s"],
                    "up_s": 0.0,
                    "down_s": 0.0,
                    "bytes_up": 0,
                    "bytes_down": 0,
                    "energy_j": f["server"]["energy_j"],
                }
            )
    return rows


def write_forecast(store: RunStore, run_id: str, result: Mapping[str, Any]) -> None:
    """Every table of a finished forecasting run, in one transaction."""
    tables = (
        ("forecast_metrics", METRIC_COLUMNS, metric_rows(result)),
        ("forecast_curve", CURVE_COLUMNS, curve_rows(result)),
        ("forecast_costs", COST_COLUMNS, cost_rows(result)),
    )
    with writing(store.path):
        store.conn.executescript(FORECAST_SCHEMA)
    with writing(store.path), store.conn:
        epochs = max((r["epoch"] for r in curve_rows(result)), default=0)
        store.conn.execute("UPDATE runs SET rounds_done = ? WHERE run_id = ?", (epochs, run_id))
        for name, columns, rows in tables:
            store.conn.executemany(
                f"INSERT INTO {name} (run_id, {', '.join(columns)}) VALUES (?{', ?' * len(columns)})",
                [(run_id, *(r[c] for c in columns)) for r in rows],
            )


def read_table(store: RunStore, run_id: str, table: str) -> list[dict[str, Any]]:
    """One forecasting table's rows (``table``: metrics, curve or costs)."""
    columns = {"metrics": METRIC_COLUMNS, "curve": CURVE_COLUMNS, "costs": COST_COLUMNS}[table]
    cur = store.conn.execute(
        f"SELECT {', '.join(columns)} FROM forecast_{table} WHERE run_id = ? ORDER BY rowid", (run_id,)
    )
    return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
