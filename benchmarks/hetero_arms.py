"""Heterogeneous fleet on MNIST (issue #11, seed 001): four arms through `tinytwin run`.

Spec: examples/hetero-mnist.yaml — nRF52840, ESP32-S3 and Raspberry Pi 4 in thirds (10 each,
300 MNIST samples each), MLP 784-64-32-10, batch 4, SGD, 20 rounds. ``model_rate: auto`` gives
the nRF52840 0.125 and the others 1.0 (``tinytwin plan examples/hetero-mnist.yaml``). Arms,
same seeds, on IID and Dirichlet(0.5) partitions:

  smallest   every group trains the nRF52840's model (the 0.125 sub-model, 784-8-4-10)
  fit-only   the full model, only on the boards it fits (the nRF52840 group left out)
  nested     each board its own rate, merged by nested averaging (HeteroFL)
  scaled     nested with HeteroFL's static scaler (a member's hidden outputs x 1/rate in training)
  shallow    nested, but the nRF52840s train a one-hidden-layer member (``model_depth: 1``;
             ``auto`` still gives it rate 0.125: 784-8-10), its classifier averaged among them
  distilled  nested, then ensemble distillation at the server (FedDF) on a 1,000-sample
             held-out slice of the MNIST training set (taken away before partitioning)

Reported per arm (mean, min, max over seeds): the global model's test accuracy, the accuracy
of the model the nRF52840s hold (the 0.125 member), bytes on the wire (up + down, whole run) and the
devices' energy (and the server's distillation energy).

    TINYTWIN_SHARED_DATA=/work/shared/data .venv/bin/python benchmarks/hetero_arms.py
    .venv/bin/python benchmarks/hetero_arms.py --from-json   # re-render the doc table only
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "hetero-mnist.yaml"
OUT = ROOT / "docs" / "results" / "hetero.json"
DOC = ROOT / "docs" / "heterogeneous.md"
BEGIN, END = "<!-- hetero-table:begin -->", "<!-- hetero-table:end -->"
SEEDS = (0, 1, 2)
PARTITIONS = {"iid": ["partition.method=iid"], "dirichlet": ["partition.method=dirichlet", "partition.alpha=0.5"]}
SMALL = 0.125
ARMS = {
    # the 0.125 sub-model of 784-64-32-10 is 784-8-4-10: every board trains that model, plain FedAvg
    "smallest": [*(f"fleet.groups.{i}.model_rate=1.0" for i in range(3)), "model.hidden=[8, 4]"],
    "fit-only": ["fleet.groups.0.count=0"],  # replaced below: the nRF52840 group is dropped
    "nested": [],
    "scaled": ["algorithm.aggregator.scaler=true"],  # nested with HeteroFL's static scaler
    "shallow": ["fleet.groups.0.model_depth=1"],  # nested, the nRF52840s on a one-hidden-layer member
    "distilled": [
        "algorithm.distillation.proxy.source=holdout",
        "algorithm.distillation.proxy.samples=1000",
        "algorithm.distillation.epochs=2",
        "algorithm.distillation.lr=0.02",
    ],
}


def arm_spec(arm: str, partition: str, seed: int):
    """The validated spec of one arm (the fit-only arm drops the nRF52840 group and averages plainly)."""
    import yaml

    from tinytwin.spec.load import load_spec, validate_spec

    sets = [f"seed={seed}", *PARTITIONS[partition]] + ([] if arm == "fit-only" else ARMS[arm])
    spec, text = load_spec(SPEC, sets)
    if arm != "fit-only":
        return spec, text
    raw = yaml.safe_load(text)
    raw["fleet"]["groups"] = [{**g, "model_rate": 1.0} for g in raw["fleet"]["groups"] if g["profile"] != "nrf52840"]
    raw["algorithm"]["aggregator"] = {"name": "fedavg"}
    return validate_spec(raw), yaml.safe_dump(raw)


def run_arm(arm: str, partition: str, seed: int, out: Path) -> dict:
    from tinytwin.engines.runner import start_run

    spec, text = arm_spec(arm, partition, seed)
    run = start_run(spec, text, out, SPEC.parent, report=False)
    s = run.summary
    sizes = {z["rate"]: z for z in s.get("model_sizes", [])}
    small = s["final_accuracy"] if arm == "smallest" else sizes.get(SMALL, {}).get("test_accuracy")
    return {
        "accuracy": s["final_accuracy"],
        "accuracy_small": small,
        "devices": s["num_devices"],
        "bytes": s["bytes_up"] + s["bytes_down"],
        "energy_j": s["energy_j_total"],
        "server_energy_j": s.get("distillation", {}).get("server_energy_j", 0.0),
        "sim_time_s": s["sim_time_s"],
    }


STRENGTHS = {  # distillation weaker and stronger than the distilled arm's, Dirichlet, seed 0
    "weaker (1 epoch, lr 0.005)": ["algorithm.distillation.epochs=1", "algorithm.distillation.lr=0.005"],
    "stronger (5 epochs, lr 0.05, T 3)": [
        "algorithm.distillation.epochs=5",
        "algorithm.distillation.lr=0.05",
        "algorithm.distillation.temperature=3",
    ],
}


def distillation_strengths(tmp: Path) -> dict[str, float]:
    """The Dirichlet seed-0 accuracy of the distilled arm with other distillation settings."""
    base = ARMS["distilled"]
    out = {}
    try:
        for label, extra in STRENGTHS.items():
            ARMS["distilled"] = base + extra
            out[label] = run_arm("distilled", "dirichlet", 0, tmp / label.split()[0])["accuracy"]
    finally:
        ARMS["distilled"] = base
    return out


def stats(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}


def render_table(results: dict) -> str:
    """The docs table, rendered from the results file only (tests/test_hetero_docs.py)."""
    rows = [
        BEGIN,
        "| partition | arm | devices | accuracy mean (min–max) | nRF52840's model | bytes / run | modelled time "
        "| device energy | server energy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, a in results["arms"].items():
        method, arm = key.split("/")
        acc = a["accuracy"]
        small = "—" if a["accuracy_small"] is None else f"{100 * a['accuracy_small']['mean']:.2f} %"
        rows.append(
            f"| {method} | {arm} | {a['devices']} | {100 * acc['mean']:.2f} % "
            f"({100 * acc['min']:.2f}–{100 * acc['max']:.2f}) | {small} | {a['bytes'] / 1e6:.1f} MB | "
            f"{a['sim_time_s'] / 60:.1f} min | "
            f"{a['energy_j'] / 1e3:.2f} kJ | {a['server_energy_j']:.1f} J |"
        )
    rows.append(END)
    return "\n".join(rows)


def write_doc_table(results: dict) -> None:
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + render_table(results) + text[end:])


def main() -> None:
    if "--from-json" in sys.argv:
        write_doc_table(json.loads(OUT.read_text()))
        return
    results: dict = {"spec": str(SPEC.relative_to(ROOT)), "seeds": list(SEEDS), "arms": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for partition in PARTITIONS:
            for arm in ARMS:
                runs = [run_arm(arm, partition, s, Path(tmp) / f"{partition}-{arm}-{s}") for s in SEEDS]
                small = [r["accuracy_small"] for r in runs if r["accuracy_small"] is not None]
                results["arms"][f"{partition}/{arm}"] = {
                    "accuracy": stats([r["accuracy"] for r in runs]),
                    "accuracy_small": stats(small) if len(small) == len(runs) else None,
                    "devices": runs[0]["devices"],
                    "bytes": float(np.mean([r["bytes"] for r in runs])),
                    "energy_j": float(np.mean([r["energy_j"] for r in runs])),
                    "server_energy_j": float(np.mean([r["server_energy_j"] for r in runs])),
                    "sim_time_s": float(np.mean([r["sim_time_s"] for r in runs])),
                    "per_seed_accuracy": [r["accuracy"] for r in runs],
                }
                print(
                    partition,
                    arm,
                    results["arms"][f"{partition}/{arm}"],
                    f"{time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
        results["distillation_strength"] = distillation_strengths(Path(tmp))
        print(results["distillation_strength"], flush=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    write_doc_table(results)
    print("wrote", OUT, "and the table of", DOC, file=sys.stderr)


if __name__ == "__main__":
    main()
