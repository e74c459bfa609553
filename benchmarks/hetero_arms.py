"""Heterogeneous fleet on MNIST (issue #11): three arms, same seeds and data, written to JSON.

Fleet in thirds: nRF52840, ESP32-S3, Raspberry Pi 4 (10 each, 300 MNIST samples each). Model
MLP 784-64-32-10, batch 4, plain SGD. Each board's rate is what ``model_rate: auto`` picks
(fleet/rate_choice.py): nRF52840 0.125, ESP32-S3 and Raspberry Pi 4 1.0. Arms:
  smallest  every device trains the rate the smallest board fits (0.125)
  fit-only  the full model, only on the boards it fits (nRF52840 excluded)
  nested    each board its own rate, merged by nested averaging (HeteroFL)
Reported: the global model's test accuracy after the last round (mean, min, max over seeds),
the accuracy of the 0.125 sub-model of the nested global model, and bytes on the wire per
round (float32 frames, up + down). Distillation (FedDF) is not implemented yet.

    PYTHONPATH=src TINYTWIN_SHARED_DATA=/work/shared/data python benchmarks/hetero_arms.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.algorithms.nested import mlp_shapes, sub_widths, submodel_index
from tinytwin.data.datasets import load_dataset
from tinytwin.data.partition import partition
from tinytwin.engines.hetero_round import hetero_round, shape_trainers
from tinytwin.fleet.catalog import load_device_catalog
from tinytwin.fleet.memory import message_bytes
from tinytwin.fleet.rate_choice import choose_rate, mlp_plan_at

HIDDEN = [64, 32]
BOARDS = ["nrf52840", "esp32-s3", "raspberry-pi-4"]
PER_BOARD, SAMPLES, ROUNDS, SEEDS = 10, 300, 20, (0, 1, 2)
CFG = LocalTraining(epochs=1, batch_size=4, lr=0.05)
OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "hetero.json"
DOC = Path(__file__).resolve().parents[1] / "docs" / "heterogeneous.md"
BEGIN, END = "<!-- hetero-table:begin -->", "<!-- hetero-table:end -->"


def board_rates() -> dict[str, float]:
    catalog = load_device_catalog()
    opts = dict(
        batch_size=CFG.batch_size,
        optimizer="sgd",
        momentum=0.0,
        prox_mu=0.0,
        uplink_encoding="float32",
        downlink_encoding="float32",
        max_samples=SAMPLES,
    )
    rates = {}
    for b in BOARDS:
        choice = choose_rate(mlp_plan_at(b, catalog[b], (1, 28, 28), 10, HIDDEN, **opts))
        print(b, choice.explain())
        assert choice.chosen is not None
        rates[b] = choice.chosen
    return rates


def accuracy(vec: torch.Tensor, rate: float, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy of the rate-``rate`` sub-model of the global vector."""
    sub = vec[torch.from_numpy(submodel_index(784, HIDDEN, 10, rate))]
    h, off = x.reshape(len(x), -1), 0
    shapes = mlp_shapes(784, sub_widths(HIDDEN, rate), 10)
    for j, (o, i) in enumerate(shapes):
        w = sub[off : off + o * i].reshape(o, i)
        b = sub[off + o * i : off + o * i + o]
        off += o * i + o
        h = h @ w.T + b
        if j < len(shapes) - 1:
            h = torch.relu(h)
    return float((h.argmax(1) == y).float().mean())


def run_arm(arm: str, rates: dict[str, float], seed: int, method: str, ds) -> dict:
    devices = [b for b in BOARDS for _ in range(PER_BOARD)]
    n = len(devices)
    parts = partition(ds.y_train, n, method=method, seed=seed, alpha=0.5, samples_per_device=SAMPLES)
    parts = [p[:SAMPLES] for p in parts]
    small = min(rates.values())
    dev_rate = np.array([{"smallest": small, "nested": rates[b], "fit-only": 1.0}[arm] for b in devices])
    active = np.array([arm != "fit-only" or rates[b] == 1.0 for b in devices])
    ids = np.flatnonzero(active)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    trainers = shape_trainers((1, 28, 28), 10, HIDDEN, dev_rate[ids], x, y, CFG, seed)
    full = shape_trainers((1, 28, 28), 10, HIDDEN, [1.0], x, y, CFG, seed)[1.0].trainer
    g = full.layout.flatten(full.module)
    for r in range(ROUNDS):
        g = hetero_round(g, trainers, r, ids, dev_rate[ids], [parts[i] for i in ids])
    xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    model_rate = small if arm == "smallest" else 1.0
    sizes = {r: int(submodel_index(784, HIDDEN, 10, r).size) for r in set(dev_rate[ids])}
    bytes_round = sum(2 * message_bytes(sizes[dev_rate[i]], "float32", [sizes[dev_rate[i]]]) for i in ids)
    return {
        "accuracy": accuracy(g, model_rate, xt, yt),
        "accuracy_small_submodel": accuracy(g, small, xt, yt),
        "devices": int(ids.size),
        "bytes_per_round": int(bytes_round),
    }


def render_table(results: dict) -> str:
    """The docs table, rendered from the results file only (tests/test_hetero_docs.py)."""
    rows = [
        BEGIN,
        "| partition | arm | devices | accuracy mean (min–max) | 0.125 sub-model accuracy | bytes / round |",
        "|---|---|---|---|---|---|",
    ]
    for key, a in results["arms"].items():
        method, arm = key.split("/")
        rows.append(
            f"| {method} | {arm} | {a['devices']} | {100 * a['accuracy_mean']:.2f} % "
            f"({100 * a['accuracy_min']:.2f}–{100 * a['accuracy_max']:.2f}) | "
            f"{100 * a['accuracy_small_submodel_mean']:.2f} % | {a['bytes_per_round']:,} |"
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
    torch.set_num_threads(1)
    ds = load_dataset("mnist", os.environ.get("TINYTWIN_SHARED_DATA"))
    rates = board_rates()
    results: dict = {"rates": rates, "rounds": ROUNDS, "seeds": list(SEEDS), "hidden": HIDDEN, "arms": {}}
    t0 = time.perf_counter()
    for method in ("iid", "dirichlet"):
        for arm in ("smallest", "fit-only", "nested"):
            runs = [run_arm(arm, rates, s, method, ds) for s in SEEDS]
            acc = [r["accuracy"] for r in runs]
            results["arms"][f"{method}/{arm}"] = {
                "accuracy_mean": float(np.mean(acc)),
                "accuracy_min": float(min(acc)),
                "accuracy_max": float(max(acc)),
                "accuracy_small_submodel_mean": float(np.mean([r["accuracy_small_submodel"] for r in runs])),
                "devices": runs[0]["devices"],
                "bytes_per_round": runs[0]["bytes_per_round"],
            }
            print(method, arm, results["arms"][f"{method}/{arm}"], f"{time.perf_counter() - t0:.0f}s", flush=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    write_doc_table(results)
    print("wrote", OUT, "and the table of", DOC, file=sys.stderr)


if __name__ == "__main__":
    main()
