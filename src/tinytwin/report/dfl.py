"""Report of a decentralized or hierarchical run: the common report plus per-device spread.

Adds to the common CSVs and plots (:mod:`tinytwin.report.export`, :mod:`tinytwin.report.plots`):
``csv/round_metrics.csv``, ``csv/device_metrics.csv``, ``csv/ledger.csv`` (hierarchical),
and plots of the accuracy spread across devices (mean, min–max band, ± std), the
consensus distance, and the hierarchical cost ledger; then renders ``report.html`` with
the common renderer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinytwin.report.export import atomic_write, csv_table, export_csv, open_run
from tinytwin.report.html import render_report
from tinytwin.report.interactive import charts_section
from tinytwin.report.orchestration_plot import orchestration_plots
from tinytwin.report.plots import PALETTE, make_plots, new_axes, note_empty, save
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore

SPREAD = "Accuracy of every device's own model on the shared test set: mean, min–max band and ± one standard deviation."
CONSENSUS = "Consensus distance: mean Euclidean distance of the devices' models to their average."
LEDGER = "Hierarchical cost ledger: link cost × megabytes per round, by level."


def is_dfl_run(store: RunStore) -> bool:
    return dfl_store.has_tables(store)


def dfl_plots(store: RunStore, run_id: str, out_dir: Path, label: str) -> dict[str, Path]:
    rm = dfl_store.round_metrics(store, run_id)
    paths: dict[str, Path] = {}
    pts = [r for r in rm if r["acc_mean"] is not None]
    fig, ax = new_axes(f"{label}: accuracy across devices", "Round", "Test accuracy (%)")
    if pts:
        x = np.array([r["round"] for r in pts], dtype=float)
        mean = 100 * np.array([r["acc_mean"] for r in pts])
        lo = 100 * np.array([r["acc_min"] for r in pts])
        hi = 100 * np.array([r["acc_max"] for r in pts])
        sd = 100 * np.array([r["acc_std"] for r in pts])
        ax.fill_between(x, lo, hi, color=PALETTE[0], alpha=0.15, label="min–max", linewidth=0)
        ax.fill_between(x, mean - sd, mean + sd, color=PALETTE[0], alpha=0.3, label="± std", linewidth=0)
        ax.plot(x, mean, color=PALETTE[0], linewidth=1.6, label="mean")
        g = [r for r in pts if r["global_accuracy"] is not None]
        if g:
            ax.plot(
                [r["round"] for r in g],
                [100 * r["global_accuracy"] for r in g],
                color=PALETTE[3],
                linewidth=1.4,
                label="global model",
            )
        ax.legend(frameon=False)
    else:
        note_empty(ax, "no evaluated rounds")
    paths[SPREAD] = save(fig, out_dir / "accuracy_spread.png")
    cd = [r for r in rm if r["consensus_distance"] is not None]
    fig, ax = new_axes(f"{label}: consensus distance", "Round", "Mean distance to the average model")
    if cd:
        ax.plot([r["round"] for r in cd], [r["consensus_distance"] for r in cd], color=PALETTE[4], linewidth=1.6)
        if min(r["consensus_distance"] for r in cd) > 0:
            ax.set_yscale("log")
    else:
        note_empty(ax, "no rounds")
    paths[CONSENSUS] = save(fig, out_dir / "consensus.png")
    ledger = dfl_store.ledger(store, run_id)
    if ledger:
        fig, ax = new_axes(f"{label}: communication cost per round", "Round", "Cost (link cost × MB)")
        levels = sorted({r["level"] for r in ledger})
        rounds = sorted({r["round"] for r in ledger})
        for i, level in enumerate(levels):
            per = {rr: 0.0 for rr in rounds}
            for row in ledger:
                if row["level"] == level:
                    per[row["round"]] += row["cost"]
            ax.plot(rounds, [per[rr] for rr in rounds], color=PALETTE[i], linewidth=1.6, label=level)
        ax.legend(frameon=False)
        paths[LEDGER] = save(fig, out_dir / "ledger.png")
    return paths


def export_dfl_csv(store: RunStore, run_id: str, out_dir: Path) -> list[Path]:
    out = [
        atomic_write(
            out_dir / "round_metrics.csv",
            csv_table(dfl_store.round_metrics(store, run_id), dfl_store.ROUND_METRIC_COLUMNS),
        ),
        atomic_write(
            out_dir / "device_metrics.csv",
            csv_table(dfl_store.device_metrics(store, run_id), dfl_store.DEVICE_METRIC_COLUMNS),
        ),
    ]
    ledger = dfl_store.ledger(store, run_id)
    if ledger:
        out.append(atomic_write(out_dir / "ledger.csv", csv_table(ledger, dfl_store.LEDGER_COLUMNS)))
    return out


def write_dfl_extras(run_dir: Path) -> Path:
    """Write the common CSVs and plots plus the decentralized ones, and report.html with all of them."""
    run_dir = Path(run_dir)
    store, info = open_run(run_dir)
    try:
        csv_files = export_csv(store, info.run_id, run_dir / "csv")
        csv_files += export_dfl_csv(store, info.run_id, run_dir / "csv")
        plots = make_plots(store, info.run_id, run_dir / "plots")
        label = f"{info.name} ({info.twin})"
        plots.update(dfl_plots(store, info.run_id, run_dir / "plots", label))
        plots.update(orchestration_plots(store, info.run_id, run_dir / "plots", label, info.summary))
        rounds, events = store.rounds(info.run_id), store.events(info.run_id)
    finally:
        store.close()
    charts = charts_section(run_dir / "results.db")
    return atomic_write(run_dir / "report.html", render_report(info, rounds, events, plots, csv_files, charts))
