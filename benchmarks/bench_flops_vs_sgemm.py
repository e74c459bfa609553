"""Achieved FLOP/s of batched local training against this machine's sgemm (issue #4, benchmark 3).

Counts the FLOPs of local training from the model's own accounting (forward + backward per
sample, optimizer step per step; docs/cost-model.md), times ``LocalTrainer.train`` on the
MNIST scale workload (MLP 784-16-10, 60 samples per device, batch 10, 1 epoch), and divides by
the FLOP/s of a large square float32 matmul in the same process.

    .venv/bin/python benchmarks/bench_flops_vs_sgemm.py [--devices 2000] [--model 784-16-10|lenet5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def sgemm_flops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--hidden", type=int, nargs="*", default=[16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vmap", action="store_true", help="use the generic vmap path instead of batched_mlp")
    args = parser.parse_args()

    from tinytwin.algorithms.local_update import LocalTraining
    from tinytwin.engines.experiment import prepare
    from tinytwin.engines.local_training import LocalTrainer
    from tinytwin.spec.load import load_spec

    spec, _ = load_spec(
        HERE / "specs" / "mnist_scale.yaml", [f"fleet.groups.0.count={args.devices}", f"model.hidden={args.hidden}"]
    )
    exp = prepare(spec, HERE / "specs")
    a = spec.algorithm
    cfg = LocalTraining(a.local_epochs, a.batch_size, a.lr, a.optimizer, a.momentum, a.weight_decay, a.prox_mu)
    trainer = LocalTrainer(
        exp.module,
        exp.layout,
        torch.from_numpy(exp.dataset.x_train),
        torch.from_numpy(exp.dataset.y_train),
        cfg,
        spec.seed,
        fast_path=not args.vmap,
    )
    ids = np.arange(exp.fleet.num_devices)
    start = exp.initial_params()
    trainer.train(start, 1, ids[:64], exp.parts[:64])  # warm-up
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        trainer.train(start, r + 2, ids, exp.parts)
        times.append(time.perf_counter() - t0)
    best = min(times)
    n = exp.num_samples
    steps = a.local_epochs * np.ceil(n / a.batch_size)
    flops = float(a.local_epochs * n.sum() * exp.flops_per_sample + steps.sum() * exp.flops_per_step)
    peak = sgemm_flops()
    print(
        json.dumps(
            {
                "devices": args.devices,
                "model": f"mlp 784-{'-'.join(map(str, args.hidden))}-10",
                "params": exp.model.num_params,
                "training_flops": flops,
                "train_seconds_best": round(best, 3),
                "achieved_gflops": round(flops / best / 1e9, 2),
                "sgemm_gflops": round(peak / 1e9, 2),
                "fraction_of_sgemm": round(flops / best / peak, 3),
                "torch_threads": torch.get_num_threads(),
                "path": "vmap" if args.vmap else "batched_mlp",
            }
        )
    )


if __name__ == "__main__":
    main()
