"""State of charge per battery device over the rounds, from the results file's ``battery_rounds``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.report.plot_style import PALETTE, new_axes, save

MAX_LINES = 12  # above this many battery devices, a min / median / max band instead of one line each


def battery_plot(rows: Sequence[Mapping[str, Any]], label: str, path: Path) -> Path:
    """Charge in % of capacity after each round, one line per device (or a band for many)."""
    by_device: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        percent = 100.0 * float(row["charge_j"]) / float(row["capacity_j"])
        by_device[int(row["device"])].append((int(row["round"]), percent))
    fig, ax = new_axes(f"{label}: battery state of charge", "Round", "Charge (% of capacity)")
    if len(by_device) <= MAX_LINES:
        for i, (d, points) in enumerate(sorted(by_device.items())):
            x, y = zip(*points)
            ax.plot(x, y, label=f"device {d}", color=PALETTE[i % len(PALETTE)], linewidth=1.4)
        ax.legend(frameon=False, fontsize=8, ncols=2)
    else:
        rounds = sorted({r for points in by_device.values() for r, _ in points})
        grid = np.full((len(by_device), len(rounds)), np.nan)
        col = {r: j for j, r in enumerate(rounds)}
        for i, points in enumerate(by_device.values()):
            for r, v in points:
                grid[i, col[r]] = v
        ax.fill_between(rounds, np.nanmin(grid, 0), np.nanmax(grid, 0), color=PALETTE[0], alpha=0.25, label="min–max")
        ax.plot(rounds, np.nanmedian(grid, 0), color=PALETTE[0], linewidth=1.6, label="median")
        ax.legend(frameon=False)
    ax.set_ylim(-2, 102)
    return save(fig, path)
