"""Accuracy under attack (#18): the quickstart fleet (10 devices, lossless) with one device
sending its update x1e4 (or x-1e4), 30 % of the devices training on flipped labels, or one
device sending +1e30 and another NaN, under FedAvg, median, trimmed mean, Krum and FedAvg with
norm bounds; and the same fleet as a decentralized mesh (DecFedAvg on a small-world graph)
with a poisoning peer, under plain mixing and the robust merges; and as a hierarchical fleet
(2 local aggregators) under FedAvg, median and trimmed mean at the local aggregators. Writes
docs/results/attacks.json and the tables in docs/robustness.md between their markers;
``--from-json`` only re-renders them.

    PYTHONPATH=src python benchmarks/attack_table.py [--rounds 20] [--from-json]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results" / "attacks.json"
DOC = REPO / "docs" / "robustness.md"
BEGIN, END = "<!-- attack-table:begin -->", "<!-- attack-table:end -->"
BASE = [
    "fleet.groups.0.count=10",
    "fleet.groups.0.link_overrides.loss=0",
    "fleet.groups.0.link_overrides.header_bytes=0",
]
RULES = {
    "fedavg": [],
    "median": ["algorithm.aggregator.name=median"],
    "trimmed_mean": ["algorithm.aggregator.name=trimmed_mean", "algorithm.aggregator.beta=0.1"],
    "krum": ["algorithm.aggregator.name=krum", "algorithm.aggregator.num_byzantine=1"],
    "fedavg + norm_bound clip x3": ['algorithm.aggregator.norm_bound={"mode": "clip", "multiple": 3.0}'],
    "fedavg + norm_bound reject x3": ['algorithm.aggregator.norm_bound={"mode": "reject", "multiple": 3.0}'],
}
ATTACKS = {
    "clean": [],
    "scale x1e4": ['attacks=[{"kind": "scale", "scale": 1e4, "devices": [0]}]'],
    "scale x-1e4": ['attacks=[{"kind": "scale", "scale": -1e4, "devices": [0]}]'],
    "label flip 30 %": ['attacks=[{"kind": "label_flip", "fraction": 0.3}]'],
    "+1e30 and NaN": ['attacks=[{"kind": "huge", "devices": [0]}, {"kind": "nan", "devices": [3]}]'],
}
MESH = ["algorithm.name=decfedavg", 'topology={"kind": "small_world", "k": 4, "beta": 0.2}']
MERGES = {
    "decfedavg (Metropolis-Hastings mix)": [],
    "decfedavg + median merge": ["algorithm.aggregator.name=median"],
    "decfedavg + trimmed-mean merge (beta 0.25)": [
        "algorithm.aggregator.name=trimmed_mean",
        "algorithm.aggregator.beta=0.25",
    ],
}
HIER = ["algorithm.name=hierarchical", 'algorithm.hierarchical={"num_clusters": 2, "local_rounds": 2}']
LOCAL_RULES = {
    "hierarchical, fedavg at the local aggregators": [],
    "hierarchical, median at the local aggregators": ["algorithm.aggregator.name=median"],
    "hierarchical, trimmed mean (beta 0.2) at the local aggregators": [
        "algorithm.aggregator.name=trimmed_mean",
        "algorithm.aggregator.beta=0.2",
    ],
}
HIER_ATTACKS = {
    "clean": [],
    "scale x-1e4": ['attacks=[{"kind": "scale", "scale": -1e4, "devices": [0]}]'],
    "label flip 30 %": ['attacks=[{"kind": "label_flip", "fraction": 0.3}]'],
}
PEER_ATTACKS = {
    "clean": [],
    "peer x-20": ['attacks=[{"kind": "scale", "scale": -20, "devices": [0]}]'],
    "peer gaussian sigma 1": ['attacks=[{"kind": "gaussian", "sigma": 1.0, "devices": [0]}]'],
    "label flip 30 %": ['attacks=[{"kind": "label_flip", "fraction": 0.3}]'],
}


def measure(rounds: int, rules: dict[str, list[str]], attacks: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Final accuracy (%) of every rule under every attack (simulation twin)."""
    from tinytwin.engines.runner import start_run
    from tinytwin.spec.load import load_spec

    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rule, rule_sets in rules.items():
            for attack, attack_sets in attacks.items():
                spec, spec_yaml = load_spec(
                    REPO / "examples" / "quickstart.yaml", [*BASE, f"rounds={rounds}", *rule_sets, *attack_sets]
                )
                folder = Path(tmp) / re.sub(r"[^A-Za-z0-9]+", "_", f"{rule}-{attack}")
                run = start_run(spec, spec_yaml, folder, REPO / "examples", report=False)
                out.setdefault(rule, {})[attack] = round(100 * float(run.summary["final_accuracy"]), 1)
    return out


def _table(rows: dict[str, dict[str, float]], first: str) -> list[str]:
    attacks = list(next(iter(rows.values())))
    lines = [f"| {first} | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
    for rule, row in rows.items():
        lines.append(f"| {rule} | " + " | ".join(f"{row[a]:.1f} %" for a in attacks) + " |")
    return lines


def render_table(results: dict) -> str:
    lines = [BEGIN, "", "Centralized (a server aggregates):", "", *_table(results["accuracy_pct"], "aggregator")]
    if "decentralized_pct" in results:
        lines += ["", "Decentralized (every device merges its neighbours' models):", ""]
        lines += _table(results["decentralized_pct"], "merge")
    if "hierarchical_pct" in results:
        lines += ["", "Hierarchical (2 local aggregators, 2 local rounds per global round):", ""]
        lines += _table(results["hierarchical_pct"], "local aggregation")
    lines += ["", f"Final test accuracy after {results['rounds']} rounds; command: `{results['command']}`.", "", END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--from-json", action="store_true")
    args = ap.parse_args()
    if args.from_json:
        results = json.loads(RESULTS.read_text())
    else:
        results = {
            "rounds": args.rounds,
            "command": f"python benchmarks/attack_table.py --rounds {args.rounds}",
            "accuracy_pct": measure(args.rounds, RULES, ATTACKS),
            "decentralized_pct": measure(args.rounds, {k: MESH + v for k, v in MERGES.items()}, PEER_ATTACKS),
            "hierarchical_pct": measure(args.rounds, {k: HIER + v for k, v in LOCAL_RULES.items()}, HIER_ATTACKS),
        }
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    text = DOC.read_text()
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: render_table(results), text, flags=re.DOTALL)
    DOC.write_text(text)
    print(render_table(results))


if __name__ == "__main__":
    main()
