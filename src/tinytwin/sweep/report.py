"""The sweep report: per-cell means with 95 % intervals, paired tests between arms, curves with bands.

Written into the sweep folder: ``cells.csv`` (one row per cell and metric), ``paired.csv``
(one row per pair of arms and metric), ``curves.png`` (mean test accuracy per round with a
t-interval band per cell) and ``report.md`` tying them together. Arms are pairs of cells
that differ in exactly one grid key; their replicates share seeds, so the tests are paired.
Only complete runs count; the report says how many runs each cell had.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinytwin.errors import TinyTwinError
from tinytwin.sweep.index import SweepIndex
from tinytwin.sweep.stats import cell_stats, paired_test, t_interval, time_to_target

#: Metric name -> (what it is, how to print it).
METRIC_NAMES = {
    "final_accuracy": "final test accuracy",
    "rounds_to_target": "rounds to target accuracy (runs that reached it)",
    "time_to_target_s": "simulated seconds to target accuracy (runs that reached it)",
    "bytes_total": "bytes up + down",
    "energy_j_total": "energy of the fleet (J)",
}
DEFAULT_TARGET = 0.8


def run_rounds(run_dir: Path) -> list[dict[str, Any]]:
    db = run_dir / "results.db"
    if not db.is_file():
        return []
    conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        cur = conn.execute("SELECT round, sim_time_s, test_accuracy FROM rounds ORDER BY round")
        return [dict(zip(("round", "sim_time_s", "test_accuracy"), row)) for row in cur.fetchall()]
    finally:
        conn.close()


def collect(sweep_dir: Path, target: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sweep's metadata and one row per run: cell, replicate, metrics and its accuracy curve."""
    index = SweepIndex.open_existing(sweep_dir)
    try:
        meta = index.meta()
        rows = index.rows()
    finally:
        index.close()
    for row in rows:
        row["overrides"] = json.loads(row["overrides_json"])
        row["curve"] = run_rounds(sweep_dir / "runs" / row["run_id"]) if row["status"] == "complete" else []
        reached_round, reached_s = time_to_target(row["curve"], target)
        row["rounds_to_target"], row["time_to_target_s"] = reached_round, reached_s
        up, down = row.get("bytes_up"), row.get("bytes_down")
        row["bytes_total"] = None if up is None or down is None else up + down
    return meta, rows


def by_cell(rows: Sequence[dict[str, Any]]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Rows grouped by grid cell, in cell order."""
    ordered = sorted(rows, key=lambda r: (r["cell"], r["replicate"]))
    return [(cell, list(group)) for cell, group in itertools.groupby(ordered, key=lambda r: r["cell"])]


def cell_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell and metric: n, mean, SD, t and bootstrap 95 % intervals."""
    out = []
    for cell, group in by_cell(rows):
        members = [m for m in group if m["status"] == "complete"]
        if not members:
            continue
        for metric in METRIC_NAMES:
            s = cell_stats([m[metric] for m in members])
            out.append({"cell": cell, "label": members[0]["label"], "metric": metric, **s.as_dict()})
    return out


def arm_pairs(rows: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Pairs of cells that differ in exactly one grid key: (that key, cell A's first row, cell B's first row)."""
    firsts = {r["cell"]: r for r in sorted(rows, key=lambda r: (r["cell"], r["replicate"]))}
    pairs = []
    for a, b in itertools.combinations(sorted(firsts), 2):
        oa, ob = firsts[a]["overrides"], firsts[b]["overrides"]
        differ = [k for k in oa if oa[k] != ob.get(k)]
        if len(differ) == 1:
            pairs.append((differ[0], firsts[a], firsts[b]))
    return pairs


def paired_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired tests (B − A, matched by seed) for every pair of arms and every metric."""
    by_cell: dict[int, dict[int, dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "complete":
            by_cell.setdefault(r["cell"], {})[r["seed"]] = r
    out = []
    for key, ra, rb in arm_pairs(rows):
        a, b = by_cell.get(ra["cell"], {}), by_cell.get(rb["cell"], {})
        seeds = sorted(set(a) & set(b))
        for metric in METRIC_NAMES:
            t = paired_test([a[s][metric] for s in seeds], [b[s][metric] for s in seeds])
            out.append(
                {"key": key, "cell_a": ra["cell"], "cell_b": rb["cell"], "a": ra["label"], "b": rb["label"]}
                | {"metric": metric, **t.as_dict()}
            )
    return out


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buf.getvalue()


def plot_curves(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Mean test accuracy per round for each cell, with its 95 % t-interval as a band."""
    from tinytwin.report.plots import PALETTE, new_axes, note_empty, save

    fig, ax = new_axes("Test accuracy per round (mean, 95 % CI over seeds)", "round", "test accuracy")
    drawn = 0
    for i, (_cell, group) in enumerate(by_cell(rows)):
        members = [m for m in group if m["curve"]]
        per_round: dict[int, list[float]] = {}
        for m in members:
            for pt in m["curve"]:
                if pt["test_accuracy"] is not None:
                    per_round.setdefault(int(pt["round"]), []).append(float(pt["test_accuracy"]))
        if not per_round:
            continue
        xs = sorted(per_round)
        means = [sum(per_round[x]) / len(per_round[x]) for x in xs]
        bands = [t_interval(per_round[x]) for x in xs]
        color = PALETTE[i % len(PALETTE)]
        ax.plot(xs, means, color=color, label=f"{members[0]['label']} (n={len(members)})", linewidth=1.6)
        ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands], color=color, alpha=0.18, linewidth=0)
        drawn += 1
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if drawn:
        ax.legend(fontsize=8, loc="lower right")
    else:
        note_empty(ax, "no complete runs yet")
    return save(fig, path)


def fmt_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _markdown(
    meta: dict[str, Any], rows: list[dict[str, Any]], cells: list[dict], paired: list[dict], target: float
) -> str:
    plan = meta["plan"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [
        f"# Sweep {plan.name}",
        "",
        f"Twin: {meta['twin']}; grid: {json.dumps(plan.grid)}; {plan.seeds} seeds per cell "
        f"(seeds {plan.base_seed}..{plan.base_seed + plan.seeds - 1}, shared by every cell); "
        f"runs: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}. Target accuracy: {target:g}.",
        "",
        "![accuracy curves](curves.png)",
        "",
        "## Cells (mean and 95 % intervals over seeds)",
        "",
        "| cell | metric | n | mean | SD | t 95 % CI | bootstrap 95 % CI |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c['label']} | {c['metric']} | {c['n']} | {fmt_value(c['mean'])} | {fmt_value(c['std'])} | "
            f"[{fmt_value(c['t_low'])}, {fmt_value(c['t_high'])}] | [{fmt_value(c['boot_low'])}, {fmt_value(c['boot_high'])}] |"
        )
    lines += [
        "",
        "## Paired tests between arms (B − A, matched by seed)",
        "",
        "| A | B | metric | n | mean diff | Wilcoxon p | rank-biserial | paired t p | Cohen's d_z |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in paired:
        lines.append(
            f"| {p['a']} | {p['b']} | {p['metric']} | {p['n']} | {fmt_value(p['mean_diff'])} | {fmt_value(p['wilcoxon_p'])} | "
            f"{fmt_value(p['rank_biserial'])} | {fmt_value(p['t_p'])} | {fmt_value(p['cohens_dz'])} |"
        )
    lines += ["", "Metrics: " + "; ".join(f"`{k}`: {v}" for k, v in METRIC_NAMES.items()) + ".", ""]
    return "\n".join(lines)


def write_sweep_report(sweep_dir: Path, target: float = DEFAULT_TARGET) -> Path:
    """Write cells.csv, paired.csv, curves.png and report.md into the sweep folder; returns report.md."""
    from tinytwin.report.export import atomic_write

    if not 0.0 < target <= 1.0:
        raise TinyTwinError(f"--target must be an accuracy in (0, 1] (got {target})")
    sweep_dir = Path(sweep_dir)
    meta, rows = collect(sweep_dir, target)
    cells, paired = cell_table(rows), paired_table(rows)
    atomic_write(sweep_dir / "cells.csv", to_csv(cells))
    atomic_write(sweep_dir / "paired.csv", to_csv(paired))
    plot_curves(rows, sweep_dir / "curves.png")
    return atomic_write(sweep_dir / "report.md", _markdown(meta, rows, cells, paired, target))
