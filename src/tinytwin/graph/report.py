"""HTML of forecasting runs: one run's report, and the comparison of several (``tinytwin compare``).

A forecasting run's headline numbers are per setup and horizon (MAE, RMSE, WMAPE), with the cost
model's time, energy and link bytes beside them; the figure is the validation MAE against epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinytwin.errors import TinyTwinError
from tinytwin.graph.tables import LABELS
from tinytwin.report.export import atomic_write, open_run
from tinytwin.report.format import format_bytes, format_energy, format_seconds
from tinytwin.report.html import esc, figure, page, table
from tinytwin.report.plot_style import PALETTE, new_axes, save
from tinytwin.store.forecast import read_table


def is_forecast(summary: dict[str, Any]) -> bool:
    return summary.get("task") == "forecasting"


def _metrics_rows(setups: dict[str, Any], persistence: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    horizons = list(persistence)
    header = ["setup", *(f"{h} {m}" for h in horizons for m in ("MAE", "RMSE", "WMAPE %"))]
    rows = [
        [esc(LABELS.get(s, s)), *(f"{test[h][m]:.3f}" for h in horizons for m in ("mae", "rmse", "wmape"))]
        for s, test in [*((s, r["test"]) for s, r in setups.items()), ("persistence (last value)", persistence)]
    ]
    return header, rows


def _cost_rows(setups: dict[str, Any]) -> list[list[str]]:
    return [
        [
            esc(LABELS.get(s, s)),
            format_seconds(r["modelled_time_s"]),
            format_energy(r["energy_j"]),
            format_bytes(r["link_bytes"]),
            format_bytes(r["train_memory_bytes"]) if "train_memory_bytes" in r else "—",
            f"{r['wall_s']:.1f} s",
        ]
        for s, r in setups.items()
    ]


def _per_cloudlet_rows(store: Any, run_id: str) -> tuple[list[str], list[list[str]]]:
    """WMAPE [%] of each cloudlet's own sensors at every horizon, one row per setup and cloudlet."""
    by: dict[tuple[str, int], dict[str, float]] = {}
    horizons: list[str] = []
    for m in read_table(store, run_id, "metrics"):
        if m["cloudlet"] is None:
            continue
        by.setdefault((m["setup"], m["cloudlet"]), {})[m["horizon"]] = m["wmape"]
        if m["horizon"] not in horizons:
            horizons.append(m["horizon"])
    rows = [[esc(LABELS.get(s, s)), str(c), *(f"{v[h]:.2f}" for h in horizons)] for (s, c), v in by.items()]
    return ["setup", "cloudlet", *(f"{h} WMAPE %" for h in horizons)], rows


def _curve_plot(curves: dict[str, list[dict[str, Any]]], title: str, path: Path) -> Path:
    fig, ax = new_axes(title, "Epoch", "Validation MAE, first horizon (mph)")
    for i, (label, rows) in enumerate(curves.items()):
        ax.plot(
            [r["epoch"] for r in rows], [r["val_mae"] for r in rows], marker="o", color=PALETTE[i % 10], label=label
        )
    ax.legend(fontsize="small")
    return save(fig, path)


def _curves(store: Any, run_id: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in read_table(store, run_id, "curve"):
        out.setdefault(LABELS.get(row["setup"], row["setup"]), []).append(row)
    return out


def write_forecast_report(run_dir: Path) -> Path:
    """``run_dir/report.html`` from the run's database."""
    store, info = open_run(run_dir)
    try:
        s = info.summary
        curves = _curves(store, info.run_id)
        cl_header, cl_rows = _per_cloudlet_rows(store, info.run_id)
    finally:
        store.close()
    header, rows = _metrics_rows(s["setups"], s["persistence"])
    fleet = s["fleet"]
    plot = _curve_plot(curves, f"{info.name}: validation MAE by epoch", run_dir / "plots" / "val_mae.png")
    body = (
        f"<h1>{esc(info.name)}</h1><p class='meta'>forecasting run, twin {esc(s['twin'])}, {s['epochs']} epoch(s), "
        f"{s['cloudlets']} cloudlets ({esc(fleet['profile'])} on {esc(fleet['link'])}; server {esc(fleet['server_profile'])})</p>"
        f"<h2>Test metrics of the best validation epoch</h2>{table(header, rows, [False] + [True] * (len(header) - 1))}"
        "<h2>The cost model: the whole run on the fleet</h2>"
        + table(
            ["setup", "modelled time", "energy", "bytes on links", "training RAM (largest site)", "wall time"],
            _cost_rows(s["setups"]),
            [False, True, True, True, True, True],
        )
        + figure(plot, "Validation MAE at the first horizon against epochs, per setup.")
        + "<h2>Per cloudlet: its own sensors (the seed's Figure 24)</h2>"
        + table(cl_header, cl_rows, [False, True] + [True] * (len(cl_header) - 2))
        + "<p class='note'>Tables: csv/forecast_metrics.csv (per cloudlet too), csv/forecast_curve.csv, "
        "csv/forecast_costs.csv (per cloudlet); everything: result.json.</p>"
    )
    return atomic_write(run_dir / "report.html", page(f"tinytwin: {info.name}", body))


def forecast_runs(run_dirs: Sequence[Path]) -> bool:
    """True if the folders are forecasting runs, False if none is; a mix is refused in one line."""
    kinds = []
    for d in run_dirs:
        store, info = open_run(Path(d))
        store.close()
        kinds.append(is_forecast(info.summary))
    if any(kinds) and not all(kinds):
        raise TinyTwinError("compare: forecasting runs and classification runs cannot be compared with each other")
    return bool(kinds) and all(kinds)


def compare_forecasts(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """``out_dir/compare.html``: every run's metrics and costs per setup, and one curve figure."""
    rows, costs, curves = [], [], {}
    header: list[str] = []
    for d in run_dirs:
        store, info = open_run(Path(d))
        try:
            if not is_forecast(info.summary):
                raise TinyTwinError(f"compare: {d} is not a forecasting run; compare forecasting runs with each other")
            label = f"{Path(d).name} ({info.twin})"
            for name, pts in _curves(store, info.run_id).items():
                curves[f"{label}: {name}"] = pts
        finally:
            store.close()
        header, r = _metrics_rows(info.summary["setups"], info.summary["persistence"])
        rows += [[esc(label), *row] for row in r]
        costs += [[esc(label), *row] for row in _cost_rows(info.summary["setups"])]
    plot = _curve_plot(curves, "Validation MAE by epoch", Path(out_dir) / "compare_val_mae.png")
    body = (
        f"<h1>Comparison of {len(run_dirs)} forecasting runs</h1>"
        f"<h2>Test metrics</h2>{table(['run', *header], rows, [False, False] + [True] * (len(header) - 1))}"
        "<h2>The cost model</h2>"
        + table(
            ["run", "setup", "modelled time", "energy", "bytes on links", "training RAM (largest site)", "wall time"],
            costs,
            [False, False, True, True, True, True, True],
        )
        + figure(plot, "Validation MAE at the first horizon against epochs.")
    )
    return atomic_write(Path(out_dir) / "compare.html", page("tinytwin comparison of forecasting runs", body))
