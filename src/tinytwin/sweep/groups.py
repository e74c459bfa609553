"""Confidence intervals for groups of runs: ``tinytwin compare --group LABEL=DIR,DIR,...``.

Why: runs made outside a sweep (by hand, by scripts, on other machines) are still
replicates of something; grouping their folders gives the same per-group means with t and
bootstrap 95 % intervals as a sweep report, and tests between every two groups. Groups
that share seeds (runs' ``seed``) are compared seed by seed (Wilcoxon signed-rank and paired
t); groups without two shared seeds get unpaired tests (Mann–Whitney U and Welch's t).
Writes ``groups.md``, ``groups.csv``, ``group_tests.csv`` and ``group_curves.png`` into
the comparison folder; every folder is checked before anything is written.
"""

from __future__ import annotations

import glob
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from tinytwin.errors import TinyTwinError
from tinytwin.sweep.report import cell_table, fmt_value, plot_curves, run_rounds, to_csv
from tinytwin.sweep.stats import paired_test, time_to_target

METRICS = ("final_accuracy", "rounds_to_target", "time_to_target_s", "bytes_total", "energy_j_total")


def parse_groups(items: Sequence[str]) -> dict[str, list[Path]]:
    """``LABEL=DIR,DIR,...`` options (shell-style wildcards allowed) as label -> run folders."""
    groups: dict[str, list[Path]] = {}
    for item in items:
        label, sep, text = item.partition("=")
        label = label.strip()
        if not sep or not label or not text.strip():
            raise TinyTwinError(f"--group {item!r} must look like LABEL=DIR,DIR,... (wildcards allowed)")
        if label in groups:
            raise TinyTwinError(f"--group {label}: given twice")
        folders: list[Path] = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            matches = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
            if not matches:
                raise TinyTwinError(f"--group {label}: {part} matches no folder")
            folders += [Path(m) for m in matches]
        groups[label] = folders
    if len(groups) < 1:
        raise TinyTwinError("--group: give at least one group of run folders")
    return groups


def _run_row(folder: Path, cell: int, replicate: int, label: str, target: float) -> dict[str, Any]:
    """One run folder as a row of the sweep report's shape (cell = group)."""
    from tinytwin.report.export import open_run

    store, info = open_run(folder)  # one line if the folder is not a run
    store.close()
    s = info.summary
    curve = run_rounds(folder)
    rounds_to, time_to = time_to_target(curve, target)
    up, down = s.get("bytes_up"), s.get("bytes_down")
    return {
        "cell": cell,
        "replicate": replicate,
        "label": label,
        "seed": info.seed,
        "run_dir": str(folder),
        "status": "complete" if info.status == "complete" else info.status,
        "final_accuracy": s.get("final_accuracy"),
        "rounds_to_target": rounds_to,
        "time_to_target_s": time_to,
        "bytes_total": None if up is None or down is None else up + down,
        "energy_j_total": s.get("energy_j_total"),
        "curve": curve,
    }


def _unpaired(a: list[float], b: list[float]) -> dict[str, float]:
    nan = math.nan
    if len(a) < 2 or len(b) < 2:
        return {"mw_p": nan, "welch_t": nan, "welch_p": nan, "cohens_d": nan}
    mw = stats.mannwhitneyu(b, a, alternative="two-sided")
    w = stats.ttest_ind(b, a, equal_var=False)
    pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    d = (np.mean(b) - np.mean(a)) / pooled if pooled > 0 else nan
    return {"mw_p": float(mw.pvalue), "welch_t": float(w.statistic), "welch_p": float(w.pvalue), "cohens_d": float(d)}


def group_tests(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """B − A for every two groups and metric: paired by seed when they share >= 2 seeds, else unpaired."""
    cells = sorted({r["cell"] for r in rows})
    out = []
    for ca, cb in itertools.combinations(cells, 2):
        ra = {r["seed"]: r for r in rows if r["cell"] == ca and r["status"] == "complete"}
        rb = {r["seed"]: r for r in rows if r["cell"] == cb and r["status"] == "complete"}
        shared = sorted(set(ra) & set(rb))
        label_a = next(r["label"] for r in rows if r["cell"] == ca)
        label_b = next(r["label"] for r in rows if r["cell"] == cb)
        for metric in METRICS:
            row: dict[str, Any] = {"a": label_a, "b": label_b, "metric": metric}
            if len(shared) >= 2:
                t = paired_test([ra[s][metric] for s in shared], [rb[s][metric] for s in shared])
                row |= {"test": "paired", **t.as_dict()}
            else:
                va = [float(r[metric]) for r in ra.values() if r[metric] is not None]
                vb = [float(r[metric]) for r in rb.values() if r[metric] is not None]
                diff = float(np.mean(vb) - np.mean(va)) if va and vb else math.nan
                row |= {"test": "unpaired", "n": min(len(va), len(vb)), "mean_diff": diff, **_unpaired(va, vb)}
            out.append(row)
    return out


def _test_line(t: dict[str, Any]) -> str:
    paired = t["test"] == "paired"
    rank_p = t["wilcoxon_p"] if paired else t["mw_p"]
    t_p = t["t_p"] if paired else t["welch_p"]
    effect = t["cohens_dz"] if paired else t["cohens_d"]
    return (
        f"| {t['a']} | {t['b']} | {t['metric']} | {t['test']} | {t['n']} | {fmt_value(t['mean_diff'])} | "
        f"{fmt_value(rank_p)} | {fmt_value(t_p)} | {fmt_value(effect)} |"
    )


def compare_groups(groups: dict[str, list[Path]], out_dir: Path, target: float = 0.8) -> Path:
    """Per-group statistics and tests between groups, written into ``out_dir``; returns groups.md."""
    from tinytwin.report.export import atomic_write

    rows = [
        _run_row(folder, cell, rep, label, target)
        for cell, (label, folders) in enumerate(groups.items())
        for rep, folder in enumerate(folders)
    ]
    cells, tests = cell_table(rows), group_tests(rows)
    out_dir = Path(out_dir)
    atomic_write(out_dir / "groups.csv", to_csv(cells))
    atomic_write(out_dir / "group_tests.csv", to_csv(tests))
    plot_curves(rows, out_dir / "group_curves.png")
    lines = [
        f"# {len(groups)} groups of runs",
        "",
        "Groups: " + "; ".join(f"{k}: {len(v)} runs" for k, v in groups.items()) + f". Target accuracy {target:g}.",
        "",
        "![accuracy curves](group_curves.png)",
        "",
        "| group | metric | n | mean | t 95 % CI | bootstrap 95 % CI |",
        "|---|---|---|---|---|---|",
        *(
            f"| {c['label']} | {c['metric']} | {c['n']} | {fmt_value(c['mean'])} | [{fmt_value(c['t_low'])}, {fmt_value(c['t_high'])}]"
            f" | [{fmt_value(c['boot_low'])}, {fmt_value(c['boot_high'])}] |"
            for c in cells
        ),
        "",
        "Tests of B − A: paired by seed (Wilcoxon signed-rank, paired t; effect: rank-biserial, d_z) where",
        "the groups share seeds, else unpaired (Mann–Whitney U, Welch's t; effect: Cohen's d).",
        "",
        "| A | B | metric | test | n | mean diff | rank test p | t test p | effect |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_test_line(t) for t in tests),
        "",
    ]
    return atomic_write(out_dir / "groups.md", "\n".join(lines))
