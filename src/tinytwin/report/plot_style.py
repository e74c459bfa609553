"""The house style shared by every PNG tinytwin writes: figure size, palette, axes, units.

Figures are built with ``matplotlib.figure.Figure`` on an explicit Agg canvas instead of
``pyplot``: no global backend switch, no GUI, no figure registry to leak.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tinytwin.report.export import atomic_write

FIGSIZE = (8.0, 4.5)
DPI = 110
PALETTE: Sequence[Any] = colormaps["tab10"].colors  # type: ignore[attr-defined]
MAX_BAR_DEVICES = 100  # above this, per-device bars are unreadable: histogram / heat map instead


def new_axes(title: str, xlabel: str, ylabel: str, figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    """A figure with the house style: left title, light grid, no top/right spines."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def save(fig: Figure, path: Path) -> Path:
    """Render to PNG in memory, then write atomically (a half-written PNG never appears)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(path, buf.getvalue())


def note_empty(ax: Axes, text: str) -> None:
    """Say why a plot is blank instead of leaving an empty frame."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.45")


def time_scale(max_s: float) -> tuple[float, str]:
    """Divisor and unit so simulated-time axes read in s, min or h."""
    if max_s < 120:
        return 1.0, "s"
    if max_s < 7200:
        return 60.0, "min"
    return 3600.0, "h"


def byte_scale(max_b: float) -> tuple[float, str]:
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if max_b >= div:
            return div, unit
    return 1.0, "B"


def energy_scale(max_j: float) -> tuple[float, str]:
    if max_j >= 1e3:
        return 1e3, "kJ"
    if max_j >= 1 or max_j == 0:
        return 1.0, "J"
    return 1e-3, "mJ"
