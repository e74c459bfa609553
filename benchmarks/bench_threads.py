"""One against two intra-op threads for a round's local training, interleaved (issue #16).

    .venv/bin/python benchmarks/bench_threads.py [--reps 5] [--data-dir ../shared/data]

Two workloads, each one round of :func:`tinytwin.engines.simulate.learn_round` (local
training of every device, the server's decoding, FedAvg):

- the 1 000-device quickstart: digits, MLP 64-32-10, 2 local epochs, batch 8
  (``partition.min_samples=0``, as in bench_simulate_scale.py);
- 10 000 MNIST devices: MLP 784-16-10, 60 samples each, 1 epoch, batch 10
  (benchmarks/specs/mnist_scale.yaml).

Thread counts alternate within each repetition (1, 2, 1, 2, ...), so both see the same
machine load; min / median / max over the repetitions are printed as JSON, with the
machine's load average and whether both thread counts gave bit-identical models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.engines.experiment import Experiment, prepare
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.simulate import learn_round
from tinytwin.engines.threads import intra_op_threads
from tinytwin.spec.load import load_spec

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def workloads(data_dir: Path) -> dict[str, Experiment]:
    quick, _ = load_spec(
        REPO / "examples" / "quickstart.yaml", ["fleet.groups.0.count=1000", "partition.min_samples=0"]
    )
    mnist, _ = load_spec(HERE / "specs" / "mnist_scale.yaml", [f"dataset.data_dir={data_dir}"])
    return {"quickstart-1000": prepare(quick), "mnist-10000": prepare(mnist)}


def trainer(exp: Experiment, threads: int) -> LocalTrainer:
    """The simulator's trainer for ``exp`` with an explicit thread count."""
    a = exp.spec.algorithm
    cfg = LocalTraining(a.local_epochs, a.batch_size, a.lr, a.optimizer, a.momentum, a.weight_decay, a.prox_mu)
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    return LocalTrainer(exp.module, exp.layout, x, y, cfg, exp.spec.seed, threads=threads)


def one_round(exp: Experiment, tr: LocalTrainer) -> tuple[float, torch.Tensor]:
    ids = np.arange(exp.fleet.num_devices)
    a = exp.spec.algorithm
    t = time.perf_counter()
    with intra_op_threads(tr.threads or 1):
        agg, _, _ = learn_round(
            tr,
            exp.initial_params(),
            1,
            ids,
            exp.parts,
            exp.num_samples,
            a.aggregator,
            a.encoding,
            exp.model.tensor_sizes,
        )
    return time.perf_counter() - t, agg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("TINYTWIN_SHARED_DATA", REPO.parent / "shared" / "data"))
    )
    args = p.parse_args()
    for name, exp in workloads(args.data_dir.resolve()).items():
        trainers = {n: trainer(exp, n) for n in (1, 2)}
        times: dict[int, list[float]] = {1: [], 2: []}
        models: dict[int, torch.Tensor] = {}
        load0 = os.getloadavg()[0]
        for _ in range(args.reps):
            for n, tr in trainers.items():
                s, models[n] = one_round(exp, tr)
                times[n].append(s)
        row: dict[str, Any] = {"workload": name, "devices": exp.fleet.num_devices, "reps": args.reps}
        row["load_avg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        for n, ts in times.items():
            row[f"threads_{n}_s"] = {
                "min": round(min(ts), 3),
                "median": round(statistics.median(ts), 3),
                "max": round(max(ts), 3),
            }
        row["identical_models"] = bool(torch.equal(models[1], models[2]))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
