"""The seed reproductions over several seeds, as sweeps with 95 % CIs, written into docs/reproductions.md.

Every arm of every seed experiment (the arms are listed in benchmarks/reproduce_seeds.py) runs as
a sweep of ``--seeds`` replicates (seed 0, 1, ...; the same seeds in every arm, so arms are
paired). Per arm the script reports the mean and the t 95 % interval of each figure over the
seeds, and per experiment a paired test of every arm's final accuracy against the first arm.
The numbers go to docs/reproductions/sweeps.json; the tables, the findings lines and the plots
(mean curve with its 95 % band) in docs/reproductions.md and docs/reproductions/*.png are
rendered from that file, and tests/test_reproductions_doc.py checks they still match it.

    .venv/bin/python benchmarks/reproduce_seeds_sweeps.py --dry-run              # the plan, nothing run
    .venv/bin/python benchmarks/reproduce_seeds_sweeps.py                        # everything, 5 seeds (hours on 2 cores)
    .venv/bin/python benchmarks/reproduce_seeds_sweeps.py seed004 --workers 2    # one experiment
    .venv/bin/python benchmarks/reproduce_seeds_sweeps.py --from-json            # re-render docs only
    .venv/bin/python benchmarks/reproduce_seeds_sweeps.py --quick --no-docs      # fewer rounds, docs untouched

Run folders: runs/reproduce-sweeps/<experiment>/<arm>/ (one sweep folder per arm, resumed if it
exists, so a killed reproduction picks up where it stopped).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_seeds import (  # noqa: E402
    EXAMPLES,
    EXPERIMENTS,
    QUICK_ROUNDS,
    REPO,
    collect,
    first_round_at,
    fluctuation,
)

DOCS = REPO / "docs"
MD = DOCS / "reproductions.md"
FIG_DIR = DOCS / "reproductions"
RESULTS = FIG_DIR / "sweeps.json"
GENERATOR = "benchmarks/reproduce_seeds_sweeps.py"

Run = dict  # one run's figures, as reproduce_seeds.collect returns them


def _tail_step(r: Run) -> float:
    """Mean absolute change of the mean accuracy between evaluations over the last 50 rounds (pp)."""
    acc, rr = np.array(r["mean_accuracy"]), np.array(r["rounds"])
    tail = rr > rr.max() - 50
    return float(np.abs(np.diff(100 * acc[tail])).mean()) if tail.sum() > 2 else math.nan


def _first_at(level: float) -> Callable[[Run], float]:
    def metric(r: Run) -> float:
        first = first_round_at(r["rounds"], r["mean_accuracy"], level)
        return math.nan if first == "—" else float(first)

    return metric


def _pp(values: list | None, index: int = -1) -> float:
    return math.nan if not values or values[index] is None else 100 * float(values[index])


# (key, column header, digits, figure of one run); the first column is each experiment's headline.
Metric = tuple[str, str, int, Callable[[Run], float]]
FINAL: Metric = ("final_acc", "final mean acc. %", 1, lambda r: _pp(r["mean_accuracy"]))
WALL: Metric = ("wall_s", "wall per run (s)", 0, lambda r: float(r["wall_s"]))
DFL_METRICS: list[Metric] = [
    FINAL,
    ("last10_acc", "mean acc. last 10 evals %", 1, lambda r: 100 * float(np.mean(r["mean_accuracy"][-10:]))),
    ("device_std", "across devices std % (final)", 1, lambda r: _pp(r["acc_std"])),
    ("fluctuation", "fluctuation (pp)", 2, lambda r: fluctuation(r["rounds"], r["mean_accuracy"])),
    ("first_80", "first round ≥ 80 %", 0, _first_at(0.8)),
    ("mb_per_device", "MB sent / device", 1, lambda r: float(r["mb_sent_per_device"])),
    ("energy_j", "energy / device (J)", 1, lambda r: float(r["energy_j_median"])),
    WALL,
]
METRICS: dict[str, list[Metric]] = {
    "zwe3-comparison": DFL_METRICS,
    "zwe3-large": DFL_METRICS,
    "zwe3-scalability": [
        FINAL,
        ("last10_acc", "mean acc. last 10 evals %", 1, lambda r: 100 * float(np.mean(r["mean_accuracy"][-10:]))),
        ("fluctuation", "fluctuation of the mean (pp)", 2, lambda r: fluctuation(r["rounds"], r["mean_accuracy"])),
        ("step", "mean abs. change between evaluations (pp)", 2, _tail_step),
        ("device_std", "across devices std % (final)", 1, lambda r: _pp(r["acc_std"])),
        WALL,
    ],
    "seed004": [
        ("final_acc", "final acc. %", 1, lambda r: _pp(r["mean_accuracy"])),
        ("best_acc", "best acc. %", 1, lambda r: 100 * max(r["mean_accuracy"])),
        ("cloudlet_min", "worst cloudlet % (final)", 1, lambda r: _pp(r["acc_min"])),
        ("cloudlet_max", "best cloudlet % (final)", 1, lambda r: _pp(r["acc_max"])),
        ("mb_per_epoch", "model MB / cloudlet / epoch", 3, lambda r: float(r["mb_per_device_per_round"])),
        WALL,
    ],
    "seed004-hfl": [
        ("final_acc", "final global acc. %", 1, lambda r: _pp(r["mean_accuracy"])),
        ("best_acc", "best %", 1, lambda r: 100 * max(r["mean_accuracy"])),
        ("cost_per_round", "cost / global round", 2, lambda r: float(r["cost_per_round"])),
        ("cost_total", "total cost", 1, lambda r: float(r["cost_total"])),
        (
            "acc_per_cost",
            "accuracy points per 1000 cost units",
            1,
            lambda r: 100 * r["mean_accuracy"][-1] / r["cost_total"] * 1000 if r["cost_total"] else math.nan,
        ),
        WALL,
    ],
}
TITLES = {
    "zwe3-comparison": "Zwe³ comparison (10 devices): mean device accuracy",
    "zwe3-large": "Zwe³ at scale (200 devices, seed 000 Fig. 5): mean device accuracy",
    "zwe3-scalability": "Zwe³ scalability, Imp (Gist): mean device accuracy",
    "seed004": "Seed 004, 7 cloudlets: accuracy by epoch",
    "seed004-hfl": "Seed 004 HFL: global accuracy by global round",
}


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()


# ---------------------------------------------------------------------------------- running


def run_arm(spec_file: str, sets: list[str], seeds: int, sweep_dir: Path, args: argparse.Namespace) -> list[Path]:
    """One arm as a sweep (resumed if its folder exists); returns its run folders."""
    from tinytwin.sweep.grid import build_plan
    from tinytwin.sweep.index import INDEX_NAME, SweepIndex
    from tinytwin.sweep.runner import SweepOptions, resume_sweep, start_sweep

    options = SweepOptions(workers=args.workers, ray=args.ray)
    if (sweep_dir / INDEX_NAME).is_file():
        index = SweepIndex(sweep_dir / INDEX_NAME)
        counts = index.counts()
        index.close()
        if counts.get("complete", 0) < sum(counts.values()):
            resume_sweep(sweep_dir, options)
    else:
        plan, runs = build_plan(EXAMPLES / spec_file, sets, {}, seeds)
        start_sweep(plan, runs, options, sweep_dir.parent, sweep_dir=sweep_dir)
    return sorted(p for p in (sweep_dir / "runs").iterdir() if p.is_dir())


def collect_run(run_dir: Path) -> Run:
    """One finished run's figures (reproduce_seeds.collect) plus its seed and its wall time."""
    from tinytwin.store.db import RunStore

    store = RunStore(run_dir / "results.db")
    info = store.run_info()
    store.close()
    if info.status != "complete":
        raise SystemExit(f"{run_dir}: run is {info.status}; rerun this script to resume its sweep")
    run = collect(run_dir, float(info.summary.get("wall_time_s") or math.nan))
    run["seed"] = info.seed
    return run


# ---------------------------------------------------------------------------------- statistics


def _clean(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def arm_summary(name: str, runs: list[Run]) -> dict:
    """Per metric: the per-seed values, their mean and t 95 % interval; and the mean curve with its band."""
    from tinytwin.sweep.stats import t_interval

    runs = sorted(runs, key=lambda r: r["seed"])
    metrics = {}
    for key, _header, _digits, fn in METRICS[name]:
        values = [_clean(fn(r)) for r in runs]
        finite = [v for v in values if v is not None]
        low, high = t_interval(finite) if finite else (math.nan, math.nan)
        metrics[key] = {
            "values": values,
            "n": len(finite),
            "mean": _clean(float(np.mean(finite))) if finite else None,
            "t_low": _clean(low),
            "t_high": _clean(high),
        }
    rounds = runs[0]["rounds"]
    same_rounds = [r for r in runs if r["rounds"] == rounds]
    curves = 100 * np.array([r["mean_accuracy"] for r in same_rounds], dtype=float)
    band = [t_interval(list(curves[:, i])) for i in range(curves.shape[1])]
    return {
        "seeds": [r["seed"] for r in runs],
        "devices": runs[0]["devices"],
        "run_dirs": [r["run_dir"] for r in runs],
        "metrics": metrics,
        "curve": {
            "rounds": rounds,
            "mean": [float(v) for v in curves.mean(axis=0)],
            "low": [float(lo) for lo, _ in band],
            "high": [float(hi) for _, hi in band],
        },
    }


def paired_against_first(arms: dict[str, dict]) -> list[dict]:
    """Every arm's final accuracy against the first arm's, seed by seed (paired t and Wilcoxon)."""
    from tinytwin.sweep.stats import paired_test

    labels = list(arms)
    base = arms[labels[0]]
    out = []
    for label in labels[1:]:
        arm = arms[label]
        shared = sorted(set(base["seeds"]) & set(arm["seeds"]))
        a = [base["metrics"]["final_acc"]["values"][base["seeds"].index(s)] for s in shared]
        b = [arm["metrics"]["final_acc"]["values"][arm["seeds"].index(s)] for s in shared]
        t = paired_test(a, b).as_dict()
        out.append({"a": labels[0], "b": label, **{k: _clean(v) for k, v in t.items()}})
    return out


# ---------------------------------------------------------------------------------- rendering


def _num(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def cell(m: dict, digits: int) -> str:
    """``mean [low, high]`` over the seeds; a missing figure in some seeds is counted in brackets."""
    if m["mean"] is None:
        return "—"
    text = _num(m["mean"], digits)
    if m["n"] > 1:
        text += f" [{_num(m['t_low'], digits)}, {_num(m['t_high'], digits)}]"
    missing = len(m["values"]) - m["n"]
    return text + (f" ({missing} never)" if missing else "")


def render_table(name: str, exp: dict) -> str:
    metrics = METRICS[name]
    first = "devices" if name == "zwe3-scalability" else "arm"
    lines = [
        f"| {first} | seeds | " + " | ".join(h for _, h, _, _ in metrics) + " |",
        "|---|---:|" + "---:|" * len(metrics),
    ]
    for label, arm in exp["arms"].items():
        head = str(arm["devices"]) if name == "zwe3-scalability" else label
        cells = [cell(arm["metrics"][key], digits) for key, _h, digits, _f in metrics]
        lines.append(f"| {head} | {len(arm['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_tests(exp: dict) -> str:
    if not exp["tests"]:
        return ""
    lines = [
        "| arm | against | seeds | mean difference (pp) | paired t p | Wilcoxon p | Cohen's d_z |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in exp["tests"]:
        lines.append(
            f"| {t['b']} | {t['a']} | {int(t['n'] or 0)} | {_num(t['mean_diff'], 2)} | {_num(t['t_p'], 3)} | "
            f"{_num(t['wilcoxon_p'], 3)} | {_num(t['cohens_dz'], 2)} |"
        )
    return "Final accuracy, paired by seed:\n\n" + "\n".join(lines) + "\n"


def render_findings(exp: dict) -> str:
    """One line naming the best arm and whether its lead over the runner-up is significant."""
    ranked = sorted(exp["arms"].items(), key=lambda kv: -(kv[1]["metrics"]["final_acc"]["mean"] or -1.0))
    (best, b), (second, s) = ranked[0], ranked[1]
    from tinytwin.sweep.stats import paired_test

    shared = sorted(set(b["seeds"]) & set(s["seeds"]))
    vb = [b["metrics"]["final_acc"]["values"][b["seeds"].index(x)] for x in shared]
    vs = [s["metrics"]["final_acc"]["values"][s["seeds"].index(x)] for x in shared]
    t = paired_test(vs, vb)
    p = "—" if math.isnan(t.t_p) else f"{t.t_p:.3f}"
    return (
        f"Highest final mean accuracy: **{best}** ({_num(b['metrics']['final_acc']['mean'], 1)} %), "
        f"{_num(t.mean_diff, 2)} pp above {second} over {t.n} shared seeds (paired t p = {p}).\n"
    )


def render_block(name: str, exp: dict) -> str:
    commands = "; ".join(f"`tinytwin run {arm['spec']}`" for arm in exp["arms"].values())
    return (
        f"<!-- BEGIN {name} (generated by {GENERATOR}; do not edit) -->\n"
        f"Measured {exp['when']}{' (quick mode: fewer rounds)' if exp['quick'] else ''} over seeds "
        f"{', '.join(map(str, exp['seeds']))}; each cell is the mean over the seeds and its t 95 % "
        f"interval. Run folders under runs/reproduce-sweeps/{name}/.\n\n"
        + render_table(name, exp)
        + "\n"
        + render_findings(exp)
        + "\n"
        + render_tests(exp)
        + f"\n![{name}](reproductions/{name}.png)\n\n"
        + f"Commands (one per seed, `--set seed=N`): {commands}\n"
        + f"<!-- END {name} -->"
    )


def block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- BEGIN {re.escape(name)} .*?<!-- END {re.escape(name)} -->", re.S)


def update_markdown(results: dict) -> None:
    text = MD.read_text()
    for name, exp in results.items():
        block = render_block(name, exp)
        pattern = block_pattern(name)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + f"\n{block}\n"
    MD.write_text(text)


def plot(name: str, exp: dict) -> Path:
    from tinytwin.report.plots import PALETTE, new_axes, save

    x_label = {"seed004": "Epoch (round)", "seed004-hfl": "Global round"}.get(name, "Round")
    fig, ax = new_axes(TITLES[name], x_label, "Test accuracy (%), mean over seeds with 95 % band")
    for i, (label, arm) in enumerate(exp["arms"].items()):
        c = arm["curve"]
        ax.plot(c["rounds"], c["mean"], color=PALETTE[i % len(PALETTE)], linewidth=1.4, label=label)
        ax.fill_between(c["rounds"], c["low"], c["high"], color=PALETTE[i % len(PALETTE)], alpha=0.15, linewidth=0)
    ax.legend(frameon=False)
    return save(fig, FIG_DIR / f"{name}.png")


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", help=f"any of {', '.join(EXPERIMENTS)} (default: all)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray", default=None, help="'auto' or HOST:PORT (default: the local process pool)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (as reproduce_seeds.py --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="override every arm's rounds (smoke tests)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "reproduce-sweeps")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--from-json", action="store_true", help="only re-render the docs from sweeps.json")
    parser.add_argument("--no-docs", action="store_true", help="write sweeps.json into --out, leave docs/ alone")
    args = parser.parse_args()
    names = args.experiments or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    results_file = args.out / "sweeps.json" if args.no_docs else RESULTS
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if not args.from_json:
        results |= run_experiments(names, args)
    if args.dry_run:
        return
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=1) + "\n")
    if args.no_docs:
        print(f"wrote {results_file}")
        return
    for name in names:
        if name in results:
            plot(name, results[name])
    update_markdown({k: v for k, v in results.items() if k in names})
    print(f"wrote {RESULTS}, {MD} and {FIG_DIR}/")


def arm_folders(out: Path, rounds_of: Callable[[str], int | None]) -> dict[tuple[str, tuple[str, ...]], Path]:
    """Every distinct arm's sweep folder: an arm in two experiments (Imp on 200 devices) has one,
    the first experiment's in EXPERIMENTS order, whichever experiments a call names."""
    folders: dict[tuple[str, tuple[str, ...]], Path] = {}
    for name, arms in EXPERIMENTS.items():
        rounds = rounds_of(name)
        for label, spec_file, overrides in arms:
            key = (spec_file, (*overrides, *([f"rounds={rounds}"] if rounds else [])))
            folders.setdefault(key, out / name / slug(label))
    return folders


def run_experiments(names: list[str], args: argparse.Namespace) -> dict:
    def rounds_of(name: str) -> int | None:
        return args.rounds or (QUICK_ROUNDS[name] if args.quick else None)

    folders = arm_folders(args.out, rounds_of)
    done: dict[tuple[str, tuple[str, ...]], list[Path]] = {}
    results = {}
    total = 0
    for name in names:
        rounds = rounds_of(name)
        arms = {}
        for label, spec_file, overrides in EXPERIMENTS[name]:
            sets = [*overrides, *([f"rounds={rounds}"] if rounds else [])]
            key = (spec_file, tuple(sets))
            sweep_dir = folders[key]
            if key in done:  # the same arm in two experiments (Imp on 200 devices) runs once
                print(f"{name} / {label}: same runs as an earlier arm", flush=True)
            else:
                total += args.seeds
                print(f"{name} / {label}: {spec_file} {' '.join(sets)} x {args.seeds} seeds -> {sweep_dir}", flush=True)
                done[key] = [] if args.dry_run else run_arm(spec_file, sets, args.seeds, sweep_dir, args)
            if args.dry_run:
                continue
            arms[label] = arm_summary(name, [collect_run(d) for d in done[key]])
            arms[label]["spec"] = f"examples/{spec_file}" + "".join(f" --set {o}" for o in sets)
        if arms:
            seeds = sorted({s for arm in arms.values() for s in arm["seeds"]})
            results[name] = {
                "quick": bool(rounds),
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "seeds": seeds,
                "arms": arms,
                "tests": paired_against_first(arms),
            }
    print(f"{total} runs{' planned' if args.dry_run else ''}")
    return results


if __name__ == "__main__":
    main()
