"""Seed 004's Figures 24 and 25 for the METR-LA week, drawn from docs/results/stgnn.json only.

    python benchmarks/stgnn_figures.py        # writes docs/reproductions/stgnn-fig24.png, -fig25.png

Figure 24: each cloudlet's test WMAPE at 15 / 30 / 60 min, per setup (the sensors a cloudlet
owns, predicted by its own model; centralized: the one model on those sensors). Figure 25:
validation MAE at 15 min against cumulative training FLOPs and against epochs, per setup.
``benchmarks/reproduce_stgnn.py`` calls :func:`write_figures` after it writes the JSON, so the
PNGs and the tables of docs/graph-forecasting.md always come from the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tinytwin.report.plot_style import DPI, PALETTE, save

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "stgnn.json"
OUT = ROOT / "docs" / "reproductions"
NAMES = {
    "centralized": "Centralized",
    "traditional": "Traditional FL",
    "serverfree": "Server-free FL",
    "gossip": "Gossip learning",
    "gossip-merge": "Gossip (merge own)",
}
HORIZONS = ("15min", "30min", "60min")


def figure_24(setups: dict[str, Any], path: Path) -> Path:
    """Per-cloudlet WMAPE, one panel per horizon, grouped bars (one per setup) per cloudlet."""
    fig = Figure(figsize=(11.0, 4.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    names = [s for s in NAMES if s in setups and setups[s].get("per_cloudlet")]
    width = 0.8 / max(len(names), 1)
    for p, horizon in enumerate(HORIZONS):
        ax = fig.add_subplot(1, 3, p + 1)
        for i, name in enumerate(names):
            rows = setups[name]["per_cloudlet"]
            x = [row["cloudlet"] + (i - (len(names) - 1) / 2) * width for row in rows]
            ax.bar(x, [row[horizon]["wmape"] for row in rows], width, color=PALETTE[i], label=NAMES[name])
        ax.set_title(f"{horizon[:-3]} min", loc="left", fontsize=10)
        ax.set_xlabel("Cloudlet")
        ax.set_ylabel("Test WMAPE (%)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(names), frameon=False, fontsize=8)
    fig.suptitle("METR-LA week: WMAPE per cloudlet (seed 004, Figure 24)")
    return save(fig, path)


def figure_25(setups: dict[str, Any], path: Path) -> Path:
    """Validation MAE at 15 min against cumulative training FLOPs (left) and epochs (right)."""
    fig = Figure(figsize=(10.0, 3.8), dpi=DPI)
    FigureCanvasAgg(fig)
    by_flops, by_epoch = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, name in enumerate(s for s in NAMES if s in setups):
        curve = setups[name]["curve"]
        mae = [point["val"]["15min"]["mae"] for point in curve]
        flops, total = [], 0.0
        for point in curve:
            total += point["train_flops"]
            flops.append(total / 1e12)
        by_flops.plot(flops, mae, marker="o", markersize=3, color=PALETTE[i], label=NAMES[name])
        by_epoch.plot([p["epoch"] for p in curve], mae, marker="o", markersize=3, color=PALETTE[i], label=NAMES[name])
    by_flops.set_xlabel("Cumulative training FLOPs (T, all cloudlets)")
    by_epoch.set_xlabel("Epoch")
    for ax in (by_flops, by_epoch):
        ax.set_ylabel("Validation MAE at 15 min (mph)")
        ax.grid(alpha=0.3)
    by_epoch.legend(frameon=False, fontsize=8)
    fig.suptitle("METR-LA week: validation error against training FLOPs and epochs (seed 004, Figure 25)")
    fig.tight_layout()
    return save(fig, path)


def write_figures(results: dict[str, Any], out: Path = OUT) -> list[Path]:
    setups = results["bench"]["setups"]
    return [figure_24(setups, out / "stgnn-fig24.png"), figure_25(setups, out / "stgnn-fig25.png")]


if __name__ == "__main__":
    for written in write_figures(json.loads(RESULTS.read_text())):
        print("wrote", written)
