"""The report's figure of a fleet of several model sizes (issue #11): per size, the test
accuracy of its slice of the global model, the bytes its devices put on the wire and their
energy, side by side, from the run summary's ``model_sizes``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tinytwin.report.format import format_model_size
from tinytwin.report.plot_style import DPI, PALETTE, byte_scale, energy_scale, save


def sizes_plot(sizes: Sequence[dict[str, Any]], label: str, path: Path) -> Path:
    """Three bar panels (accuracy %, bytes up + down, energy), one bar per model rate."""
    fig = Figure(figsize=(10.0, 3.8), dpi=DPI)
    FigureCanvasAgg(fig)
    names = [f"{format_model_size(z)}\n{', '.join(z['groups'])}" for z in sizes]
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(sizes))]
    traffic = [z["bytes_up"] + z["bytes_down"] for z in sizes]
    b_div, b_unit = byte_scale(max(traffic, default=0))
    e_div, e_unit = energy_scale(max((z["energy_j"] for z in sizes), default=0.0))
    panels = [
        ("Test accuracy (%)", [100 * (z["test_accuracy"] or 0.0) for z in sizes]),
        (f"Bytes up + down ({b_unit})", [t / b_div for t in traffic]),
        (f"Device energy ({e_unit})", [z["energy_j"] / e_div for z in sizes]),
    ]
    for i, (ylabel, values) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.bar(names, values, color=colours)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{label}: per model size")
    fig.tight_layout()
    return save(fig, path)
