"""Seed 004 §3 on the METR-LA week: Tables 5 and 6, per-cloudlet WMAPE, validation curves, partitions.

    python benchmarks/reproduce_stgnn.py [--data-dir DIR] [--from-json]

Trains examples/graph/stgnn-metr-la-bench.yaml (every setup, same seed), counts the overheads
of the seed's own configuration (stgnn-metr-la-seed.yaml) exactly without training it, writes
docs/results/stgnn.json, and regenerates the block between the markers of
docs/graph-forecasting.md. ``--from-json`` re-renders the block from the JSON only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from tinytwin.graph.experiment import build_partition, data_folder, run_forecast, train_config
from tinytwin.graph.forecasting import load_forecast
from tinytwin.graph.setups import costs, site_sizes
from tinytwin.graph.stgcn import param_count
from tinytwin.graph.tables import LABELS, partition_table, per_cloudlet_wmape, table5, table6
from tinytwin.spec.forecast import load_forecast_spec

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "examples" / "graph" / "stgnn-metr-la-bench.yaml"
SEED = ROOT / "examples" / "graph" / "stgnn-metr-la-seed.yaml"
RESULTS = ROOT / "docs" / "results" / "stgnn.json"
DOC = ROOT / "docs" / "graph-forecasting.md"
BEGIN, END = "<!-- stgnn:begin (benchmarks/reproduce_stgnn.py) -->", "<!-- stgnn:end -->"
FOUR = ("centralized", "traditional", "serverfree", "gossip")
#: Seed 004 Table 5 (METR-LA, four months): MAE / RMSE / WMAPE at 15, 30, 60 min.
SEED_TABLE5 = {
    "centralized": [3.78, 9.05, 7.45, 5.14, 11.61, 10.12, 7.35, 14.59, 14.47],
    "traditional": [3.97, 9.01, 7.82, 5.40, 11.41, 10.63, 7.82, 14.48, 15.40],
    "serverfree": [3.90, 8.98, 7.78, 5.35, 11.37, 10.67, 7.79, 14.41, 15.55],
    "gossip": [3.88, 9.04, 7.74, 5.43, 11.35, 10.85, 7.56, 14.42, 15.10],
}
#: Seed 004 Table 6 (METR-LA): model MB/epoch, training TFLOPs/epoch, aggregation MFLOPs/epoch, node-feature MB.
SEED_TABLE6 = {
    "centralized": [None, 0.24, None, 0.68],
    "traditional": [0.13, 1.56, 0.16, 3.69],
    "serverfree": [0.23, 1.56, 0.25, 3.69],
    "gossip": [0.13, 1.56, 0.42, 3.69],
}


def seed_config_costs(data_dir: Path | None) -> dict[str, Any]:
    """Table 6 of the seed's own model (64-16-64, 40 epochs) on the week, counted without training."""
    spec = load_forecast_spec(SEED, [f"dataset.data_dir={data_dir}"] if data_dir else [])
    cfg = train_config(spec)
    data = load_forecast(spec.dataset.name, data_folder(spec, SEED.parent))
    part = build_partition(data.graph, spec, SEED.parent, spec.model.blocks)
    return {
        "params": param_count(cfg.model),
        "setups": {s: {"costs": costs(s, site_sizes(part, s), part, data, cfg)} for s in FOUR},
    }


def _ranking(scores: dict[str, float]) -> str:
    return " < ".join(LABELS[s] for s in sorted(scores, key=lambda s: scores[s]))


def _curves(bench: dict[str, Any]) -> str:
    rows = [
        "| epoch | " + " | ".join(f"{LABELS[s]} val MAE 15 min (cum. TFLOPs)" for s in bench["setups"]) + " |",
        "|---:|" + "---:|" * len(bench["setups"]),
    ]
    n = max(len(r["curve"]) for r in bench["setups"].values())
    for e in range(n):
        cells = [
            f"{r['curve'][e]['val']['15min']['mae']:.3f} ({r['curve'][e]['train_flops'] / 1e12:.2f})"
            for r in bench["setups"].values()
        ]
        rows.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render(results: dict[str, Any]) -> str:
    """The generated block of docs/graph-forecasting.md (a test holds it equal to the JSON)."""
    bench, seed_cfg = results["bench"], results["seed_config"]
    ours = {s: bench["setups"][s]["test"]["15min"]["mae"] for s in FOUR}
    theirs = {s: SEED_TABLE5[s][0] for s in FOUR}
    pers = bench["persistence"]["15min"]["mae"]
    c = {s: seed_cfg["setups"][s]["costs"] for s in FOUR}
    flops_ratio = c["traditional"]["train_flops_per_epoch"] / c["centralized"]["train_flops_per_epoch"]
    feat_ratio = c["traditional"]["feature_bytes_per_epoch_total"] / c["centralized"]["feature_bytes_per_epoch_total"]
    seed6 = "\n".join(
        f"| {LABELS[s]} | {v[0] or '-'} | {v[3]} | {v[1]}T | {str(v[2]) + 'M' if v[2] else '-'} |"
        for s, v in SEED_TABLE6.items()
    )
    seed5 = "\n".join(f"| {LABELS[s]} | " + " | ".join(f"{x:.2f}" for x in v) + " |" for s, v in SEED_TABLE5.items())
    parts = [
        BEGIN,
        f"Measured {results['date']} on {results['machine']}: `{results['command']}` ({results['wall_s']:.0f} s).",
        f"Windows: {bench['windows']['train']} train / {bench['windows']['val']} validation / {bench['windows']['test']} test; trained model: {bench['spec']['model']['channels']} channels, output {bench['spec']['model']['out_hidden']}, {bench['spec']['train']['epochs']} epochs, lr {bench['spec']['train']['lr']}.",
        "",
        "**Table 5 (this run, test windows of the week, mph / mph / %):**",
        "",
        table5(bench),
        "",
        "Seed 004 Table 5, METR-LA (four months), same columns:",
        "",
        "| setup | " + " | ".join(f"{h} MAE | {h} RMSE | {h} WMAPE" for h in ("15min", "30min", "60min")) + " |",
        "|---|" + "---:|" * 9,
        seed5,
        "",
        f"Ordering by 15-min MAE — here: {_ranking(ours)}; seed: {_ranking(theirs)}. "
        f"Centralized beats persistence at 15 min by {pers - ours['centralized']:.2f} mph ({ours['centralized']:.2f} vs {pers:.2f}).",
        "",
        f"**Table 6, the seed's own model ({seed_cfg['params']:,} parameters), counted for the week's training windows:**",
        "",
        table6(seed_cfg),
        "",
        "Seed 004 Table 6, METR-LA (four months): model MB/epoch, node features MB, training FLOPs/epoch, aggregation FLOPs/epoch:",
        "",
        "| setup | model [MB]/epoch | node features [MB] | training FLOPs/epoch | aggregation FLOPs/epoch |",
        "|---|---:|---:|---:|---:|",
        seed6,
        "",
        f"Overhead ratios, cloudlets (traditional FL) over centralized: training FLOPs {flops_ratio:.2f}x here, {1.56 / 0.24:.2f}x in the seed; "
        f"node features, all cloudlets together over centralized: {feat_ratio:.2f}x here (the seed's per-cloudlet figure over its centralized one: {3.69 / 0.68:.2f}x).",
        "",
        "**Table 6 of the trained (narrower) model:**",
        "",
        table6(bench),
        "",
        "**Per-cloudlet WMAPE [%] at 15 min (the seed's Figure 24):**",
        "",
        per_cloudlet_wmape(bench, "15min"),
        "",
        "At 60 min:",
        "",
        per_cloudlet_wmape(bench, "60min"),
        "",
        "**Validation MAE at 15 min against epochs and cumulative training FLOPs (the seed's Figure 25):**",
        "",
        _curves(bench),
        "",
        f"**METR-LA partition** (7 cloudlets, 8 km, 2-hop halos; {bench['partition']['metr-la-week']['kept']} sensors kept, {bench['partition']['metr-la-week']['dropped']} outside every radius):",
        "",
        partition_table(bench["partition"]["metr-la-week"]),
        "",
        f"**PeMS-BAY partition** (graph only; k-means centres, 7 cloudlets, 8 km; {bench['partition']['pems-bay-graph']['kept']} sensors kept, {bench['partition']['pems-bay-graph']['dropped']} dropped; feature bytes for the same {bench['partition']['pems-bay-graph']['steps_per_epoch']} training steps):",
        "",
        partition_table(bench["partition"]["pems-bay-graph"]),
        END,
    ]
    return "\n".join(parts)


def write_figures(results: dict[str, Any]) -> None:
    """Figures 24 and 25 from the same results (``benchmarks/stgnn_figures.py``, loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stgnn_figures", Path(__file__).with_name("stgnn_figures.py"))
    assert spec is not None and spec.loader is not None
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    figures.write_figures(results)


def write_doc(results: dict[str, Any]) -> None:
    text = DOC.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + render(results) + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("TINYTWIN_SHARED_DATA"))
    ap.add_argument("--from-json", action="store_true", help="re-render the doc block from docs/results/stgnn.json")
    args = ap.parse_args()
    if args.from_json:
        write_doc(json.loads(RESULTS.read_text()))
        write_figures(json.loads(RESULTS.read_text()))
        return
    over = [f"dataset.data_dir={args.data_dir}"] if args.data_dir else []
    t0 = time.perf_counter()
    bench = run_forecast(
        load_forecast_spec(BENCH, over), BENCH.parent, lambda s, r: print(f"{s}: {r['wall_s']:.0f} s", flush=True)
    )
    results = {
        "command": "python benchmarks/reproduce_stgnn.py",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs",
        "wall_s": time.perf_counter() - t0,
        "bench": bench,
        "seed_config": seed_config_costs(args.data_dir),
    }
    RESULTS.write_text(json.dumps(results, indent=1))
    write_doc(results)
    write_figures(results)


if __name__ == "__main__":
    main()
