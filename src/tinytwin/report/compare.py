"""Side-by-side comparison of several runs (twins, seeds, algorithms).

The point of a digital twin is to check that the simulator, the emulator and the firmware
agree, so comparison overlays the same curves from each run on one set of axes and puts
their headline numbers in one table. Every folder is validated before anything is written,
so a typo in the last path does not leave a half-made comparison behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.errors import TinyTwinError
from tinytwin.report.export import atomic_write, open_run
from tinytwin.report.format import (
    MISSING,
    format_accuracy,
    format_bytes,
    format_energy,
    format_number,
    format_seconds,
)
from tinytwin.report.html import esc, figure, key_figures, page, render_value, table
from tinytwin.report.plots import (
    PALETTE,
    accuracy_points,
    byte_scale,
    cumulative,
    energy_scale,
    new_axes,
    note_empty,
    save,
    time_scale,
)
from tinytwin.store.db import RunInfo


@dataclass(frozen=True)
class _Run:
    folder: Path
    info: RunInfo
    rounds: list[dict[str, Any]]
    label: str


def _load(folder: Path) -> _Run:
    store, info = open_run(folder)
    try:
        rounds = store.rounds(info.run_id)
    finally:
        store.close()
    return _Run(folder, info, rounds, f"{info.name} ({info.twin})")


def _unique_labels(runs: list[_Run]) -> list[_Run]:
    """Two seeds of one experiment share name and twin; add the folder name so legends stay distinct."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    return [_Run(r.folder, r.info, r.rounds, f"{r.label} [{r.folder.name}]") if seen[r.label] > 1 else r for r in runs]


def _overlay(
    runs: list[_Run],
    title: str,
    xlabel: str,
    ylabel: str,
    path: Path,
    series: Callable[[_Run], tuple[np.ndarray, np.ndarray]],
) -> Path:
    fig, ax = new_axes(title, xlabel, ylabel)
    drawn = 0
    for i, run in enumerate(runs):
        x, y = series(run)
        if len(x):
            ax.plot(
                x,
                y,
                label=run.label,
                color=PALETTE[i % len(PALETTE)],
                linewidth=1.6,
                linestyle="-" if i < len(PALETTE) else "--",
                marker="o" if len(x) <= 30 else None,
                markersize=3,
            )
            drawn += 1
    if drawn:
        ax.legend(frameon=False, fontsize=8)
    else:
        note_empty(ax, "no data in any run")
    return save(fig, path)


def _plots(runs: list[_Run], out_dir: Path) -> dict[str, Path]:
    acc = {id(r): accuracy_points(r.rounds) for r in runs}
    t_div, t_unit = time_scale(max((float(a[1].max()) for a in acc.values() if len(a[1])), default=0.0))
    traffic = {id(r): cumulative(r.rounds, "bytes_up") + cumulative(r.rounds, "bytes_down") for r in runs}
    b_div, b_unit = byte_scale(max((float(v[-1]) for v in traffic.values() if len(v)), default=0.0))
    energy = {id(r): cumulative(r.rounds, "energy_j") for r in runs}
    e_div, e_unit = energy_scale(max((float(v[-1]) for v in energy.values() if len(v)), default=0.0))

    def rounds_of(r: _Run) -> np.ndarray:
        return np.array([x["round"] for x in r.rounds], dtype=float)

    n = f"{len(runs)} runs"
    return {
        "accuracy_round": _overlay(
            runs,
            f"Test accuracy by round ({n})",
            "Round",
            "Test accuracy (%)",
            out_dir / "compare_accuracy_round.png",
            lambda r: (acc[id(r)][0], acc[id(r)][2]),
        ),
        "accuracy_time": _overlay(
            runs,
            f"Test accuracy by modelled time ({n})",
            f"Modelled time, the cost model's clock ({t_unit})",
            "Test accuracy (%)",
            out_dir / "compare_accuracy_time.png",
            lambda r: (acc[id(r)][1] / t_div, acc[id(r)][2]),
        ),
        "bytes": _overlay(
            runs,
            f"Cumulative traffic, up + down ({n})",
            "Round",
            f"Cumulative data ({b_unit})",
            out_dir / "compare_bytes.png",
            lambda r: (rounds_of(r), traffic[id(r)] / b_div),
        ),
        "energy": _overlay(
            runs,
            f"Cumulative energy, all devices ({n})",
            "Round",
            f"Cumulative energy ({e_unit})",
            out_dir / "compare_energy.png",
            lambda r: (rounds_of(r), energy[id(r)] / e_div),
        ),
    }


def _median_energy(summary: dict[str, Any]) -> str:
    per_dev = summary.get("energy_j_per_device")
    return format_energy(per_dev.get("median")) if isinstance(per_dev, dict) else MISSING


def _summary_table(runs: list[_Run]) -> str:
    figs = [key_figures(r.rounds, r.info.summary) for r in runs]
    status = [
        (
            '<span class="good">complete</span>'
            if r.info.status == "complete"
            else f'<span class="bad">incomplete ({esc(r.info.status)})</span>'
        )
        for r in runs
    ]
    rows: list[tuple[str, list[str]]] = [
        ("Folder", [esc(r.folder) for r in runs]),
        ("Twin", [esc(r.info.twin) for r in runs]),
        ("Status", status),
        ("Rounds done / planned", [f"{r.info.rounds_done} / {r.info.rounds_planned}" for r in runs]),
        ("Final accuracy", [esc(format_accuracy(f["final_accuracy"])) for f in figs]),
        ("Best accuracy", [esc(format_accuracy(f["best_accuracy"])) for f in figs]),
        ("Modelled time (cost model)", [esc(format_seconds(f["sim_time_s"])) for f in figs]),
        ("Bytes up", [esc(format_bytes(f["bytes_up"])) for f in figs]),
        ("Bytes down", [esc(format_bytes(f["bytes_down"])) for f in figs]),
        ("Energy, all devices", [esc(format_energy(f["energy_j"])) for f in figs]),
        ("Energy per device (median)", [esc(_median_energy(r.info.summary)) for r in runs]),
        ("Wall-clock time (measured, rounds)", [esc(format_seconds(f["wall_time_s"])) for f in figs]),
        ("Seed", [esc(format_number(r.info.seed)) for r in runs]),
    ]
    for key, label in (
        ("num_devices", "Devices"),
        ("algorithm", "Algorithm"),
        ("dataset", "Dataset"),
        ("model", "Model"),
    ):
        if any(key in r.info.summary for r in runs):
            rows.append((label, [render_value(r.info.summary.get(key)) for r in runs]))
    return table(["", *(r.label for r in runs)], ([f"<b>{esc(label)}</b>", *cells] for label, cells in rows))


def compare_runs(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Overlay the runs' curves in PNGs under ``out_dir`` and write ``out_dir/compare.html``; return its path."""
    if not run_dirs:
        raise TinyTwinError("compare: give at least one run folder")
    runs = _unique_labels([_load(Path(d)) for d in run_dirs])
    out_dir = Path(out_dir)
    plots = _plots(runs, out_dir)
    captions = {
        "accuracy_round": "Test accuracy against round.",
        "accuracy_time": "Test accuracy against modelled time: the simulator's virtual clock, and the same "
        "cost model's figures for the rounds an emulation ran (its wall-clock time is in the table).",
        "bytes": "Cumulative bytes sent up and down, all devices.",
        "energy": "Cumulative energy of all devices.",
    }
    names = ", ".join(r.label for r in runs)
    body = (
        f'<h1>Comparison of {len(runs)} runs</h1><p class="meta">{esc(names)}</p>'
        f"<h2>Summary</h2>{_summary_table(runs)}"
        f"<h2>Plots</h2>{''.join(figure(p, captions[k]) for k, p in plots.items())}"
        '<p class="note">Incomplete runs are plotted up to their last finished round.</p>'
    )
    return atomic_write(out_dir / "compare.html", page(f"tinytwin comparison: {names}", body))
