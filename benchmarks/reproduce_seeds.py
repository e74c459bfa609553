"""Run each seed experiment's arms once (one seed) and write their tables and plots into runs/reproduce/.

The published reproductions (docs/reproductions.md) come from reproduce_seeds_sweeps.py, which
runs these same arms over five seeds; this script is the quick single-seed look.

    .venv/bin/python benchmarks/reproduce_seeds.py                 # everything (about an hour on 2 cores)
    .venv/bin/python benchmarks/reproduce_seeds.py zwe3-comparison seed004
    .venv/bin/python benchmarks/reproduce_seeds.py --quick         # fewer rounds, no 200-device run
    .venv/bin/python benchmarks/reproduce_seeds.py --from-json     # re-render from the last results

Experiments (specs in examples/):

- ``zwe3-comparison``  seed 000: DecFedAvg, AS, Imp (Gist), Imp&AS on 10 devices, 150 rounds
- ``zwe3-scalability`` seed 000: Imp on 10, 100 and 200 devices
- ``zwe3-large``       seed 000 Figure 5: DecFedAvg, AS, Imp, Imp&AS on 200 devices
- ``seed004``          seed 004: traditional FL vs server-free FL vs gossip learning on 7 cloudlets
- ``seed004-hfl``      seed 004: hierarchical FL (2 local aggregators, minCommCost) vs flat FL

Results go to runs/reproduce/: run folders, *.png (plots), results.json (the numbers) and
the marked blocks of tables.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FIG_DIR = REPO / "runs" / "reproduce"
RESULTS = FIG_DIR / "results.json"
MD = FIG_DIR / "tables.md"

FLAT_COSTS = "[" + ",".join(["[8]"] * 8) + "]"

EXPERIMENTS: dict[str, list[tuple[str, str, list[str]]]] = {
    "zwe3-comparison": [
        ("DecFedAvg", "zwe3-decfedavg.yaml", []),
        ("AS", "zwe3-as.yaml", []),
        ("Imp", "zwe3-imp.yaml", []),
        ("Imp&AS", "zwe3-imp-as.yaml", []),
        ("Imp, vanilla merge", "zwe3-imp.yaml", ["name=zwe3-imp-vanilla", "algorithm.gist.merge=vanilla"]),
    ],
    "zwe3-scalability": [
        ("10 devices", "zwe3-scalability.yaml", []),
        ("100 devices", "zwe3-scalability.yaml", ["fleet.groups.0.count=100", "evaluation.every=2"]),
        ("200 devices", "zwe3-scalability.yaml", ["fleet.groups.0.count=200", "evaluation.every=2"]),
    ],
    "zwe3-large": [
        ("DecFedAvg", "zwe3-decfedavg.yaml", ["fleet.groups.0.count=200", "evaluation.every=2"]),
        ("AS", "zwe3-as.yaml", ["fleet.groups.0.count=200", "evaluation.every=2"]),
        ("Imp", "zwe3-scalability.yaml", ["fleet.groups.0.count=200", "evaluation.every=2"]),
        ("Imp&AS", "zwe3-imp-as.yaml", ["fleet.groups.0.count=200", "evaluation.every=2"]),
    ],
    "seed004": [
        ("Traditional FL", "seed004-cloudlets-traditional.yaml", []),
        ("Server-free FL", "seed004-cloudlets-serverfree.yaml", []),
        ("Gossip learning", "seed004-cloudlets-gossip.yaml", []),
    ],
    "seed004-hfl": [
        ("HFL, 2 local aggregators (minCommCost)", "seed004-hierarchical.yaml", []),
        (
            "Flat FL, 1 aggregator",
            "seed004-hierarchical.yaml",
            [
                "algorithm.hierarchical.num_clusters=1",
                f"algorithm.hierarchical.client_costs={FLAT_COSTS}",
                "algorithm.hierarchical.aggregator_costs=[0]",
            ],
        ),
    ],
}

QUICK_ROUNDS = {"zwe3-comparison": 40, "zwe3-scalability": 40, "zwe3-large": 40, "seed004": 10, "seed004-hfl": 4}


# ---------------------------------------------------------------------------------- running


def run_one(spec_file: str, overrides: list[str], out: Path) -> Path:
    from tinytwin.engines.runner import start_run
    from tinytwin.spec.load import load_spec

    spec, text = load_spec(EXAMPLES / spec_file, overrides)
    t0 = time.perf_counter()
    outcome = start_run(spec, text, out, EXAMPLES)
    print(f"  {spec.name}: {time.perf_counter() - t0:.0f} s -> {outcome.run_dir}", flush=True)
    return outcome.run_dir


def collect(run_dir: Path, wall_s: float) -> dict:
    from tinytwin.store import dfl as dfl_store
    from tinytwin.store.db import RunStore

    store = RunStore(run_dir / "results.db")
    info = store.run_info()
    rounds = store.rounds(info.run_id)
    rm = dfl_store.round_metrics(store, info.run_id)
    devices = store.device_rounds(info.run_id)
    ledger = dfl_store.ledger(store, info.run_id)
    store.close()
    s = info.summary
    n = s["num_devices"]
    acc = [(r["round"], r["test_accuracy"]) for r in rounds if r["test_accuracy"] is not None]
    spread = {r["round"]: (r["acc_min"], r["acc_max"], r["acc_std"]) for r in rm if r["acc_mean"] is not None}
    sent = np.zeros(n)
    for d in devices:
        sent[d["device"]] += d["bytes_up"]
    return {
        "run_dir": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
        "devices": n,
        "rounds": [a for a, _ in acc],
        "mean_accuracy": [b for _, b in acc],
        "acc_min": [spread.get(a, (None,) * 3)[0] for a, _ in acc],
        "acc_max": [spread.get(a, (None,) * 3)[1] for a, _ in acc],
        "acc_std": [spread.get(a, (None,) * 3)[2] for a, _ in acc],
        "global_accuracy": [r["global_accuracy"] for r in rm if r["global_accuracy"] is not None],
        "components": rm[-1]["components"] if rm else None,
        "sim_time_s": s["sim_time_s"],
        "mb_sent_per_device": float(sent.mean() / 1e6),
        "mb_per_device_per_round": float(sent.mean() / 1e6 / max(len(rounds), 1)),
        "energy_j_median": s["energy_j_per_device"]["median"],
        "cost_total": s.get("cost_total"),
        "cost_per_round": s.get("cost_per_round"),
        "cost_by_round": _cost_by_round(ledger),
        "wall_s": wall_s,
        "summary_topology": s.get("topology"),
    }


def _cost_by_round(ledger: list[dict]) -> list[float]:
    by: dict[int, float] = {}
    for row in ledger:
        by[row["round"]] = by.get(row["round"], 0.0) + row["cost"]
    return [by[k] for k in sorted(by)]


def run_experiments(names: list[str], quick: bool, out: Path) -> dict:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in names:
        print(f"{name}:", flush=True)
        entries = {}
        for label, spec_file, overrides in EXPERIMENTS[name]:
            if quick and label == "200 devices":
                continue
            ov = list(overrides) + ([f"rounds={QUICK_ROUNDS[name]}"] if quick else [])
            t0 = time.perf_counter()
            run_dir = run_one(spec_file, ov, out / name)
            entries[label] = collect(run_dir, time.perf_counter() - t0)
            entries[label]["spec"] = f"examples/{spec_file}" + "".join(f" --set {o}" for o in ov)
        results[name] = {"quick": quick, "runs": entries, "when": time.strftime("%Y-%m-%d %H:%M")}
        FIG_DIR.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1))
    return results


# ---------------------------------------------------------------------------------- numbers


def fluctuation(rounds: list[int], acc: list[float], last: int = 50) -> float:
    """Std of the mean accuracy over the last ``last`` rounds around its linear trend (percentage points)."""
    r = np.array(rounds, dtype=float)
    a = 100 * np.array(acc, dtype=float)
    keep = r > r.max() - last
    if keep.sum() < 3:
        return float("nan")
    coef = np.polyfit(r[keep], a[keep], 1)
    return float((a[keep] - np.polyval(coef, r[keep])).std())


def first_round_at(rounds: list[int], acc: list[float], level: float) -> str:
    for r, a in zip(rounds, acc):
        if a >= level:
            return str(r)
    return "—"


def pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def table_zwe3(runs: dict) -> str:
    head = (
        "| method | final mean acc. % | mean acc. last 10 rounds % | across devices: min–max % (std) | "
        "fluctuation (pp) | first round ≥ 80 % | MB sent / device | energy / device (J) | wall (s) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for label, r in runs.items():
        acc = r["mean_accuracy"]
        rows.append(
            f"| {label} | {pct(acc[-1])} | {pct(float(np.mean(acc[-10:])))} | "
            f"{pct(r['acc_min'][-1])}–{pct(r['acc_max'][-1])} ({pct(r['acc_std'][-1])}) | "
            f"{fluctuation(r['rounds'], acc):.2f} | {first_round_at(r['rounds'], acc, 0.8)} | "
            f"{r['mb_sent_per_device']:.1f} | {r['energy_j_median']:.1f} | {r['wall_s']:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def table_scal(runs: dict) -> str:
    head = (
        "| devices | final mean acc. % | mean acc. last 10 evals % | fluctuation of the mean (pp) | "
        "mean abs. change between evaluations (pp) | across devices std % (final) | wall (s) |\n"
        "|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for _label, r in runs.items():
        acc = np.array(r["mean_accuracy"])
        rr = np.array(r["rounds"])
        tail = rr > rr.max() - 50
        step = np.abs(np.diff(100 * acc[tail])).mean() if tail.sum() > 2 else float("nan")
        rows.append(
            f"| {r['devices']} | {pct(acc[-1])} | {pct(float(acc[-10:].mean()))} | "
            f"{fluctuation(r['rounds'], list(acc)):.2f} | {step:.2f} | {pct(r['acc_std'][-1])} | "
            f"{r['wall_s']:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def table_seed004(runs: dict) -> str:
    head = (
        "| setup | final acc. % | best acc. % | across cloudlets min–max % | model MB / cloudlet / epoch | "
        "graph components | wall (s) |\n|---|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for label, r in runs.items():
        acc = r["mean_accuracy"]
        spread = (
            f"{pct(r['acc_min'][-1])}–{pct(r['acc_max'][-1])}" if r["acc_min"][-1] is not None else "one global model"
        )
        rows.append(
            f"| {label} | {pct(acc[-1])} | {pct(max(acc))} | {spread} | {r['mb_per_device_per_round']:.3f} | "
            f"{r['components'] if r['components'] is not None else '—'} | {r['wall_s']:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def table_hfl(runs: dict) -> str:
    head = (
        "| configuration | final global acc. % | best % | cost / global round | total cost | "
        "accuracy points per 1000 cost units | wall (s) |\n|---|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for label, r in runs.items():
        acc = r["mean_accuracy"]
        eff = 100 * acc[-1] / r["cost_total"] * 1000 if r["cost_total"] else float("nan")
        rows.append(
            f"| {label} | {pct(acc[-1])} | {pct(max(acc))} | {r['cost_per_round']:.2f} | "
            f"{r['cost_total']:.1f} | {eff:.1f} | {r['wall_s']:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


TABLES = {
    "zwe3-comparison": table_zwe3,
    "zwe3-scalability": table_scal,
    "zwe3-large": table_zwe3,
    "seed004": table_seed004,
    "seed004-hfl": table_hfl,
}


# ---------------------------------------------------------------------------------- plots


def plot(name: str, runs: dict) -> Path:
    from tinytwin.report.plots import PALETTE, new_axes, save

    titles = {
        "zwe3-comparison": "Zwe³ comparison (10 devices): mean device accuracy",
        "zwe3-scalability": "Zwe³ scalability, Imp (Gist): mean device accuracy",
        "zwe3-large": "Zwe³ at scale (200 devices): mean device accuracy",
        "seed004": "Seed 004, 7 cloudlets: accuracy by epoch",
        "seed004-hfl": "Seed 004 HFL: global accuracy against communication cost",
    }
    if name == "seed004-hfl":
        fig, ax = new_axes(titles[name], "Cumulative communication cost (link cost × MB)", "Test accuracy (%)")
        for i, (label, r) in enumerate(runs.items()):
            ax.plot(
                np.cumsum(r["cost_by_round"]),
                100 * np.array(r["mean_accuracy"]),
                color=PALETTE[i],
                marker="o",
                markersize=3,
                label=label,
            )
    else:
        fig, ax = new_axes(titles[name], "Round" if name != "seed004" else "Epoch (round)", "Test accuracy (%)")
        for i, (label, r) in enumerate(runs.items()):
            x = np.array(r["rounds"])
            ax.plot(x, 100 * np.array(r["mean_accuracy"]), color=PALETTE[i], linewidth=1.4, label=label)
            if r["acc_min"] and r["acc_min"][0] is not None and name != "zwe3-scalability":
                ax.fill_between(
                    x,
                    100 * np.array(r["acc_min"], dtype=float),
                    100 * np.array(r["acc_max"], dtype=float),
                    color=PALETTE[i],
                    alpha=0.12,
                    linewidth=0,
                )
    ax.legend(frameon=False)
    return save(fig, FIG_DIR / f"{name}.png")


# ---------------------------------------------------------------------------------- docs


def update_markdown(results: dict) -> None:
    text = MD.read_text() if MD.is_file() else "# Seed reproductions, one seed per arm\n"
    for name, res in results.items():
        block = (
            f"<!-- BEGIN {name} (generated by benchmarks/reproduce_seeds.py; do not edit) -->\n"
            f"Measured {res['when']}{' (quick mode: fewer rounds)' if res['quick'] else ''}; "
            f"run folders under runs/reproduce/{name}/.\n\n"
            + TABLES[name](res["runs"])
            + f"\n![{name}]({name}.png)\n\n"
            + "Commands: "
            + "; ".join(f"`tinytwin run {r['spec']}`" for r in res["runs"].values())
            + "\n"
            f"<!-- END {name} -->"
        )
        pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} .*?<!-- END {re.escape(name)} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text += f"\n{block}\n"
    MD.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", help=f"any of {', '.join(EXPERIMENTS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and no 200-device run")
    parser.add_argument("--from-json", action="store_true", help="only re-render plots and docs from results.json")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "reproduce")
    args = parser.parse_args()
    names = args.experiments or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}")
    sys.path.insert(0, str(REPO / "src"))
    if args.from_json:
        results = json.loads(RESULTS.read_text())
    else:
        results = run_experiments(names, args.quick, args.out)
    for name in names:
        if name in results:
            plot(name, results[name]["runs"])
    update_markdown({k: v for k, v in results.items() if k in names})
    print(f"wrote {MD} and {FIG_DIR}/")


if __name__ == "__main__":
    main()
