"""PNG plots of one run.

Figures are built with ``matplotlib.figure.Figure`` on an explicit Agg canvas instead of
``pyplot``: no global backend switch, no GUI, no figure registry to leak, so reports can be
made from worker threads, headless CI and a running CLI alike. Every plot shares one look
(``new_axes``), labels its axes with units and names the run in its title; ``compare``
reuses the same helpers so single-run and comparison plots match.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from tinytwin.report.battery_plot import battery_plot
from tinytwin.report.plot_style import (  # noqa: F401  (re-exported for compare, dfl, sweeps)
    DPI,
    FIGSIZE,
    MAX_BAR_DEVICES,
    PALETTE,
    byte_scale,
    energy_scale,
    new_axes,
    note_empty,
    save,
    time_scale,
)
from tinytwin.report.sizes_plot import sizes_plot
from tinytwin.store.db import RunStore


def accuracy_points(rounds: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(round, sim_time_s, accuracy %) of the rounds that were evaluated (NULL accuracy skipped)."""
    ev = [r for r in rounds if r.get("test_accuracy") is not None]
    return (
        np.array([r["round"] for r in ev], dtype=float),
        np.array([r["sim_time_s"] for r in ev], dtype=float),
        np.array([r["test_accuracy"] for r in ev], dtype=float) * 100.0,
    )


def cumulative(rounds: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.cumsum(np.array([r.get(key) or 0 for r in rounds], dtype=float))


def _marker(n: int) -> str | None:
    return "o" if n <= 30 else None


def _plot_accuracy(ax: Axes, x: np.ndarray, acc: np.ndarray, rnd: np.ndarray) -> None:
    if not len(acc):
        note_empty(ax, "no evaluated rounds yet")
        return
    ax.plot(x, acc, color=PALETTE[0], marker=_marker(len(acc)), markersize=3.5, linewidth=1.6)
    best = int(np.argmax(acc))
    ax.plot([x[best]], [acc[best]], "o", color=PALETTE[3], zorder=3)
    right_half = x[best] > (x.min() + x.max()) / 2
    ax.annotate(
        f"best {acc[best]:.1f} % (round {int(rnd[best])})",
        (x[best], acc[best]),
        textcoords="offset points",
        xytext=(-6 if right_half else 6, -14),
        ha="right" if right_half else "left",
        fontsize=8,
        color=PALETTE[3],
    )


def _group_colours(groups: Sequence[str]) -> dict[str, Any]:
    order = list(dict.fromkeys(groups))
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(order)}


def _class_colours(k: int) -> list[Any]:
    if k <= 10:
        return list(colormaps["tab10"].colors)[:k]  # type: ignore[attr-defined]
    if k <= 20:
        return list(colormaps["tab20"].colors)[:k]  # type: ignore[attr-defined]
    return [colormaps["viridis"](i / max(k - 1, 1)) for i in range(k)]


def make_plots(store: RunStore, run_id: str, out_dir: Path) -> dict[str, Path]:
    """Write the run's PNGs into ``out_dir``; return ``{plot key: path}`` in display order."""
    out_dir = Path(out_dir)
    info = store.run_info(run_id)
    rounds = store.rounds(run_id)
    devices = store.devices(run_id)
    label = f"{info.name} ({info.twin})"
    paths: dict[str, Path] = {}

    rnd, t, acc = accuracy_points(rounds)
    fig, ax = new_axes(f"{label}: test accuracy by round", "Round", "Test accuracy (%)")
    _plot_accuracy(ax, rnd, acc, rnd)
    paths["accuracy_round"] = save(fig, out_dir / "accuracy_round.png")

    div, unit = time_scale(float(t.max()) if len(t) else 0.0)
    fig, ax = new_axes(f"{label}: test accuracy by simulated time", f"Simulated time ({unit})", "Test accuracy (%)")
    _plot_accuracy(ax, t / div, acc, rnd)
    paths["accuracy_time"] = save(fig, out_dir / "accuracy_time.png")

    x = np.array([r["round"] for r in rounds], dtype=float)
    up, down = cumulative(rounds, "bytes_up"), cumulative(rounds, "bytes_down")
    div, unit = byte_scale(max(up[-1], down[-1]) if len(x) else 0.0)
    fig, ax = new_axes(f"{label}: cumulative traffic", "Round", f"Cumulative data ({unit})")
    if len(x):
        ax.plot(x, up / div, label="uplink (devices → server)", color=PALETTE[0], linewidth=1.6)
        ax.plot(x, down / div, label="downlink (server → devices)", color=PALETTE[1], linewidth=1.6)
        ax.legend(frameon=False)
    else:
        note_empty(ax, "no finished rounds yet")
    paths["bytes"] = save(fig, out_dir / "bytes.png")

    energy = cumulative(rounds, "energy_j")
    div, unit = energy_scale(float(energy[-1]) if len(x) else 0.0)
    fig, ax = new_axes(f"{label}: cumulative energy, all devices", "Round", f"Cumulative energy ({unit})")
    if len(x):
        ax.plot(x, energy / div, color=PALETTE[2], linewidth=1.6)
    else:
        note_empty(ax, "no finished rounds yet")
    paths["energy"] = save(fig, out_dir / "energy.png")

    paths["device_energy"] = _device_energy_plot(store, run_id, devices, label, out_dir / "device_energy.png")
    paths["class_hist"] = _class_hist_plot(devices, label, out_dir / "class_hist.png")
    if (info.summary or {}).get("model_sizes"):
        paths["model_sizes"] = sizes_plot(info.summary["model_sizes"], label, out_dir / "model_sizes.png")
    battery = store.battery_rounds(run_id)
    if battery:
        paths["battery"] = battery_plot(battery, label, out_dir / "battery.png")
    return paths


def _device_energy_plot(store: RunStore, run_id: str, devices: list[dict[str, Any]], label: str, path: Path) -> Path:
    """Sorted bars coloured by group; a per-group stacked histogram once bars get too thin."""
    totals: dict[int, float] = {d["device"]: 0.0 for d in devices}
    for r in store.device_rounds(run_id):
        totals[r["device"]] = totals.get(r["device"], 0.0) + float(r["energy_j"] or 0.0)
    group_of = {d["device"]: d["group"] for d in devices}
    colours = _group_colours([group_of.get(dev, "?") for dev in totals])
    div, unit = energy_scale(max(totals.values(), default=0.0))

    if not totals:
        fig, ax = new_axes(f"{label}: total energy per device", "Device", "Energy")
        note_empty(ax, "no devices recorded")
    elif len(totals) <= MAX_BAR_DEVICES:
        order = sorted(totals, key=lambda dev: -totals[dev])
        fig, ax = new_axes(f"{label}: total energy per device", "Device (sorted by energy)", f"Energy ({unit})")
        ax.bar(
            range(len(order)),
            [totals[d] / div for d in order],
            color=[colours[group_of.get(d, "?")] for d in order],
            width=0.8,
        )
        if len(order) <= 30:
            ax.set_xticks(range(len(order)), [str(d) for d in order], fontsize=7)
        else:
            ax.set_xticks([])
    else:
        fig, ax = new_axes(
            f"{label}: total energy per device ({len(totals)} devices)", f"Total energy per device ({unit})", "Devices"
        )
        by_group: dict[str, list[float]] = defaultdict(list)
        for dev, e in totals.items():
            by_group[group_of.get(dev, "?")].append(e / div)
        names = list(colours)
        ax.hist(
            [by_group[g] for g in names],
            bins=min(40, max(10, len(totals) // 20)),
            stacked=True,
            color=[colours[g] for g in names],
            edgecolor="white",
            linewidth=0.4,
        )
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if totals:
        # Outside the axes: a frameless legend over same-coloured bars would hide its own patches.
        ax.legend(
            handles=[Patch(color=c, label=g) for g, c in colours.items()],
            title="group",
            frameon=False,
            fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
        )
    return save(fig, path)


def _class_hist_plot(devices: list[dict[str, Any]], label: str, path: Path) -> Path:
    """How the partitioner split the labels: stacked bars per device, or a heat map for big fleets."""
    k = max((len(d["class_hist"]) for d in devices), default=0)
    hist = np.zeros((len(devices), k))
    for i, d in enumerate(devices):
        hist[i, : len(d["class_hist"])] = d["class_hist"]
    ids = [str(d["device"]) for d in devices]

    if not len(devices) or k == 0:
        fig, ax = new_axes(f"{label}: class histogram per device", "Device", "Samples")
        note_empty(ax, "no partition recorded")
    elif len(devices) <= MAX_BAR_DEVICES:
        fig, ax = new_axes(f"{label}: class histogram per device", "Device", "Training samples")
        bottom = np.zeros(len(devices))
        for c, colour in enumerate(_class_colours(k)):
            ax.bar(range(len(devices)), hist[:, c], bottom=bottom, color=colour, width=0.85, label=str(c), linewidth=0)
            bottom += hist[:, c]
        if len(devices) <= 40:
            ax.set_xticks(range(len(devices)), ids, fontsize=7)
        if k <= 20:
            ax.legend(title="class", frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        fig, ax = new_axes(f"{label}: class histogram ({len(devices)} devices)", "Device index", "Class")
        ax.grid(False)
        im = ax.imshow(hist.T, aspect="auto", interpolation="nearest", cmap="viridis", origin="lower")
        fig.colorbar(im, ax=ax, label="Training samples")
    return save(fig, path)
