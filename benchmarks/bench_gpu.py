"""Seconds per round of MNIST-sized FedAvg fleets on one GPU, through the engine's own code path.

Run once on the GPU machine, from the repository root (a hard limit of 5 minutes in all):

    PYTHONPATH=src:.gpu_deps python benchmarks/bench_gpu.py --out $OUT/gpu.json

Smoke mode on a CPU (seconds): ``--device cpu --sizes 100,1000``.

Workload per fleet size: MLP 784-16-10 (12 730 parameters), 60 samples per device, batch 10,
one local epoch (6 steps), plain SGD lr 0.1, every device every round, FedAvg (streamed chunk
by chunk beyond one chunk of devices), float32 uplink, the global model evaluated on 10 000
test images every round. The data are synthetic and MNIST-shaped (1x28x28 in [0, 1], 10
classes, 60 000 training and 10 000 test images: a noisy class prototype each), because the
GPU machine has no MNIST file; the arithmetic is the same. A round is
:func:`tinytwin.engines.simulate.learn_round` plus the global update and the evaluation: the
simulator's learning path; its cost model and database rows are not part of it.

Then DecFedAvg (``--dfl-sizes``): the same devices and local training on a random geometric
graph (positions uniform in a square of side √n, radius for a mean degree of 8), then every
device's model mixed with its neighbours' by the Metropolis–Hastings matrix: the decentralized
engine's ``LocalTrainer.train`` and ``algorithms.mixing.mix`` on the device. Per round it
reports train + mix time, and separately the evaluation of 256 devices' own models on the test
set and the consensus distance (the engine evaluates every device in its evaluation rounds).

``--precision bfloat16`` (or ``float16``) trains the timed fleets in that dtype
(``engine.precision``: half the memory traffic of the per-device products, float32 sums); the
CPU-vs-device check stays float32, and the accuracy per round shows what the precision costs.

Every size has a time guard: a size whose estimated time would overrun the budget is skipped
(recorded as such), and the JSON is rewritten after every measurement, so the script always
finishes within ``--budget-s`` and leaves what it measured.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before importing torch: CUDA start-up counts against the budget

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tinytwin.algorithms.local_update import LocalTraining  # noqa: E402
from tinytwin.algorithms.mixing import distances_to_mean, mix  # noqa: E402
from tinytwin.engines.device import PRECISIONS, default_chunk, resolve_device  # noqa: E402
from tinytwin.engines.evaluate import accuracy_and_loss  # noqa: E402
from tinytwin.engines.evaluate_many import evaluate_many  # noqa: E402
from tinytwin.engines.local_training import LocalTrainer  # noqa: E402
from tinytwin.engines.shards import Shards  # noqa: E402
from tinytwin.engines.simulate import learn_round  # noqa: E402
from tinytwin.models.params import ParamLayout  # noqa: E402
from tinytwin.models.zoo import make_model  # noqa: E402
from tinytwin.net.topology import geometric, metropolis_hastings  # noqa: E402
from tinytwin.spec.schema import AggregatorSpec  # noqa: E402

SAMPLES, BATCH, LR, SEED = 60, 10, 0.1, 0
MEAN_DEGREE, EVALUATED = 8.0, 256


def synthetic_mnist(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` MNIST-shaped images (1x28x28 float32 in [0, 1]) and labels: a noisy prototype per class."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).random((10, 784), dtype=np.float32)
    y = rng.integers(0, 10, n)
    x = np.clip(0.6 * protos[y] + 0.4 * rng.random((n, 784), dtype=np.float32), 0.0, 1.0)
    return torch.from_numpy(x.reshape(n, 1, 28, 28)), torch.from_numpy(y)


class Fleet:
    """One model, one dataset and a trainer on ``device``: runs FedAvg rounds for any fleet size."""

    def __init__(self, device: torch.device, chunk: int | None, dtype: torch.dtype = torch.float32) -> None:
        self.model = make_model("mlp", (1, 28, 28), 10, hidden=[16])
        self.module = self.model.build(SEED)
        self.layout = ParamLayout.of(self.module)
        x, y = synthetic_mnist(60_000, 1)
        xt, yt = synthetic_mnist(10_000, 2)
        self.device = device
        self.x_test, self.y_test = xt.to(device), yt.to(device)
        cfg = LocalTraining(1, BATCH, LR, "sgd", 0.0, 0.0, 0.0)
        self.trainer = LocalTrainer(
            self.module,
            self.layout,
            x,
            y,
            cfg,
            SEED,
            chunk_size=default_chunk(device, chunk),
            device=device,
            dtype=dtype,
        )

    def initial(self) -> torch.Tensor:
        return self.layout.flatten(self.module)

    def parts(self, devices: int) -> tuple[np.ndarray, Shards, np.ndarray]:
        """Device ids, each device's 60 sample indices (shared samples; one flat array and
        offsets, as the simulator holds them), and sample counts."""
        idx = np.random.default_rng(devices).integers(0, 60_000, (devices, SAMPLES))
        shards = Shards.from_offsets(idx.ravel(), np.arange(0, devices * SAMPLES + 1, SAMPLES))
        return np.arange(devices), shards, np.full(devices, SAMPLES, dtype=np.int64)

    def round(
        self, g: torch.Tensor, r: int, fleet: tuple[np.ndarray, Shards, np.ndarray], evaluate: bool = True
    ) -> tuple[torch.Tensor, float | None]:
        """One FedAvg round from the global model ``g`` (on the CPU, as the simulator keeps it)."""
        ids, parts, n = fleet
        agg, _, error = learn_round(
            self.trainer, g, r, ids, parts, n, AggregatorSpec(), "float32", self.model.tensor_sizes
        )
        if error is not None:
            raise RuntimeError(error)
        g = g + agg.cpu()
        acc = None
        if evaluate:
            acc, _ = accuracy_and_loss(self.module, self.layout, g.to(self.device), self.x_test, self.y_test)
        return g, acc


class Mesh:
    """A DecFedAvg fleet on a random geometric graph: ids, samples and the mixing matrix."""

    def __init__(self, fleet: Fleet, devices: int) -> None:
        t = time.perf_counter()
        self.ids, self.parts, _ = fleet.parts(devices)
        pos = np.random.default_rng(devices + 1).random((devices, 2)) * devices**0.5
        topo = geometric(pos, (MEAN_DEGREE / np.pi) ** 0.5)
        self.edges = topo.num_edges
        self.w = metropolis_hastings(devices, topo.edges)
        self.setup_s = time.perf_counter() - t

    def round(self, fleet: Fleet, x: torch.Tensor, r: int) -> torch.Tensor:
        """Every device trains from its own model, then mixes with its neighbours (DecFedAvg)."""
        return mix(self.w, fleet.trainer.train(x, r, self.ids, self.parts).params)


def evaluate_sample(fleet: Fleet, x: torch.Tensor) -> tuple[float, float]:
    """Mean test accuracy of ``EVALUATED`` devices' own models, and the consensus distance."""
    rows = torch.linspace(0, len(x) - 1, min(EVALUATED, len(x)), device=x.device).long()
    acc, _ = evaluate_many(fleet.module, fleet.layout, x[rows], fleet.x_test, fleet.y_test)
    consensus = float(distances_to_mean(x).mean())  # the engine's definition
    return float(acc.mean()), consensus


def measure_decentralized(fleet: Fleet, devices: int, rounds: int, deadline: float) -> dict[str, Any]:
    """Warm-up round, then up to ``rounds`` timed DecFedAvg rounds while they fit before ``deadline``."""
    dev = fleet.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    mesh = Mesh(fleet, devices)
    x = fleet.initial().to(dev).expand(devices, -1).clone()
    times: list[float] = []
    evals: list[float] = []
    accs: list[float] = []
    for r in range(1, rounds + 2):
        t = time.perf_counter()
        x = mesh.round(fleet, x, r)
        sync(dev)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        acc, consensus = evaluate_sample(fleet, x)
        evals.append(time.perf_counter() - t)
        accs.append(acc)
        if r > 1 and time.perf_counter() + times[-1] + evals[-1] > deadline:
            break
    return round_stats(
        dev,
        devices,
        times,
        edges=mesh.edges,
        evaluation_s_median=round(statistics.median(evals), 4),
        mesh_setup_s=round(mesh.setup_s, 3),
        mean_accuracy_of_sampled_devices=accs,
        final_consensus_distance=consensus,
    )


def round_stats(dev: torch.device, devices: int, times: list[float], **extra: Any) -> dict[str, Any]:
    """One size's row: the warm-up round apart, min / median / max of the timed ones,
    device-updates per second, ``extra`` fields, and the peak GPU memory on a GPU."""
    steady = times[1:] or times
    med = statistics.median(steady)
    out: dict[str, Any] = {
        "devices": devices,
        "status": "measured",
        "warmup_round_s": round(times[0], 4),
        "steady_rounds_s": [round(x, 4) for x in steady],
        "seconds_per_round_median": round(med, 4),
        "seconds_per_round_min": round(min(steady), 4),
        "seconds_per_round_max": round(max(steady), 4),
        "device_updates_per_s": round(devices / med),
        **extra,
    }
    if dev.type == "cuda":
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return out


def decentralized_check(device: torch.device, devices: int, rounds: int) -> dict[str, Any]:
    """DecFedAvg on the CPU and on ``device``: max relative difference of the devices' models."""
    cpu, other = Fleet(torch.device("cpu"), None), Fleet(device, None)
    mesh = Mesh(cpu, devices)
    a = cpu.initial().expand(devices, -1).clone()
    b = a.to(device)
    for r in range(1, rounds + 1):
        a, b = mesh.round(cpu, a, r), mesh.round(other, b, r)
    rel = float((a - b.cpu()).abs().max() / a.abs().max())
    return {"devices": devices, "rounds": rounds, "max_rel_diff": rel, "bar": 1e-5, "passed": rel <= 1e-5}


def sweep(
    sizes: list[int], run: Any, deadline: float, rows: list[dict[str, Any]], save: Any, skip_key: str = ""
) -> None:
    """Measure each size with ``run(devices)`` unless its estimate (from the last size) overruns the budget."""
    per_device_s: float | None = None
    for devices in sizes:
        left = deadline - time.perf_counter()
        estimate = None if per_device_s is None else per_device_s * devices * 2.5 + 5.0
        if estimate is not None and estimate > left:
            row: dict[str, Any] = {"devices": devices, "status": "skipped", "estimated_s": round(estimate, 1)}
            row["reason"] = f"warm-up + 1 timed round estimated {estimate:.0f} s, {left:.0f} s left of the budget"
        else:
            row = run(devices)
            per_device_s = max(row["warmup_round_s"], row["seconds_per_round_median"]) / devices
        rows.append(row)
        print(skip_key, json.dumps({k: v for k, v in row.items() if not k.endswith("accuracy_per_round")}), flush=True)
        save()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def numerical_check(device: torch.device, devices: int, rounds: int) -> dict[str, Any]:
    """The same fleet on the CPU and on ``device``: max relative difference of the global model."""
    cpu, other = Fleet(torch.device("cpu"), None), Fleet(device, None)
    fleet = cpu.parts(devices)
    a = b = cpu.initial()
    for r in range(1, rounds + 1):
        a, _ = cpu.round(a, r, fleet, evaluate=False)
        b, _ = other.round(b, r, fleet, evaluate=False)
    rel = float((a - b).abs().max() / a.abs().max())
    return {"devices": devices, "rounds": rounds, "max_rel_diff": rel, "bar": 1e-5, "passed": rel <= 1e-5}


def measure(fleet: Fleet, devices: int, rounds: int, deadline: float) -> dict[str, Any]:
    """Warm-up round, then up to ``rounds`` timed rounds while they fit before ``deadline``."""
    dev = fleet.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    parts = fleet.parts(devices)
    setup_s = time.perf_counter() - t
    g = fleet.initial()
    times: list[float] = []
    accs: list[float | None] = []
    for r in range(1, rounds + 2):
        t = time.perf_counter()
        g, acc = fleet.round(g, r, parts)
        sync(dev)
        times.append(time.perf_counter() - t)
        accs.append(acc)
        if r > 1 and time.perf_counter() + times[-1] > deadline:
            break
    return round_stats(
        dev,
        devices,
        times,
        fleet_setup_s=round(setup_s, 3),
        chunk_size=fleet.trainer.chunk_size,
        accuracy_per_round=accs,
    )


def write(path: Path, result: dict[str, Any]) -> None:
    result["elapsed_s"] = round(time.perf_counter() - T0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--device", default="cuda", help="cuda (default), cpu or auto")
    p.add_argument("--sizes", default="10000,100000,1000000", help="fleet sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per size after one warm-up round")
    p.add_argument("--dfl-sizes", default="10000,100000", help="DecFedAvg fleet sizes (empty: none)")
    p.add_argument("--chunk", type=int, default=None, help="devices per chunk (default: the engine's)")
    p.add_argument("--check-devices", type=int, default=200, help="fleet size of the CPU-vs-device check")
    p.add_argument(
        "--precision", default="float32", choices=sorted(PRECISIONS), help="local training's dtype (engine.precision)"
    )
    p.add_argument("--budget-s", type=float, default=270.0, help="total time budget, CUDA start-up included")
    args = p.parse_args()
    deadline = T0 + args.budget_s
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA context start-up, counted in elapsed_s
    else:
        torch.set_num_threads(1)  # the engine's CPU default (docs/benchmarks.md, threads)
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda,
        "workload": "MLP 784-16-10, 60 synthetic MNIST-shaped samples/device, batch 10, 1 epoch, SGD 0.1, FedAvg",
        "precision": args.precision,
        "startup_s": round(time.perf_counter() - T0, 2),
        "sizes": [],
        "decentralized": {
            "workload": f"the same devices and training, DecFedAvg on a random geometric graph (mean degree {MEAN_DEGREE:g})",
            "sizes": [],
        },
    }
    print(f"{result['gpu'] or 'cpu'}, torch {torch.__version__}, start-up {result['startup_s']} s", flush=True)
    result["numerical_check"] = numerical_check(device, args.check_devices, 3)
    print("check", json.dumps(result["numerical_check"]), flush=True)
    write(args.out, result)
    fleet = Fleet(device, args.chunk, PRECISIONS[args.precision])  # the check above stays float32
    dfl_sizes = [int(s) for s in args.dfl_sizes.split(",") if s]
    # FedAvg gets the budget left minus a share kept for DecFedAvg
    fedavg_deadline = deadline - (0.4 * (deadline - time.perf_counter()) if dfl_sizes else 0.0)
    sweep(
        [int(s) for s in args.sizes.split(",")],
        lambda n: measure(fleet, n, args.rounds, fedavg_deadline),
        fedavg_deadline,
        result["sizes"],
        lambda: write(args.out, result),
        "fedavg",
    )
    if dfl_sizes:
        dfl = result["decentralized"]
        dfl["numerical_check"] = decentralized_check(device, args.check_devices, 3)
        print("decfedavg check", json.dumps(dfl["numerical_check"]), flush=True)
        sweep(
            dfl_sizes,
            lambda n: measure_decentralized(fleet, n, args.rounds, deadline),
            deadline,
            dfl["sizes"],
            lambda: write(args.out, result),
            "decfedavg",
        )
    print(f"wrote {args.out} after {time.perf_counter() - T0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
