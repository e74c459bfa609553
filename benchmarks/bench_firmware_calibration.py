"""Firmware calibration table: counted instructions vs the cost model's FLOP-based time.

For each catalog profile that has a firmware twin and each model of the table, one local
epoch runs as the C client on the profile's emulated board (QEMU, -icount shift=0). The
firmware's instruction count gives the device time ``insns x CPI / clock``
(tinytwin.firmware.profiles); the cost model gives ``FLOPs / flops_per_s`` (docs/cost-model.md).
The ratio says how far the catalog's flops_per_s estimate is from what the compiled C needs.

    .venv/bin/python benchmarks/bench_firmware_calibration.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.firmware.build import build_firmware, required_arena_bytes
from tinytwin.firmware.profiles import TARGETS
from tinytwin.firmware.qemu import QemuDevice, SyncDevice, batch_order
from tinytwin.fleet.catalog import load_device_catalog
from tinytwin.fleet.cost import compute_flops
from tinytwin.models.accounting import backward_flops, forward_flops, optimizer_step_flops
from tinytwin.models.zoo import make_model

MODELS = {  # name: (layer widths, samples per device, batch size)
    "digits mlp 64-32-10": ([64, 32, 10], 90, 8),
    "mnist mlp 784-16-10": ([784, 16, 10], 60, 10),
    "TinyFedTL head 256-2": ([256, 2], 50, 1),
}


def cost_model_flops(sizes: list[int], n: int, batch: int) -> int:
    """The cost model's FLOPs of one local epoch (as tinytwin.engines.experiment computes them)."""
    model = make_model("mlp", (sizes[0], 1, 1), sizes[-1], hidden=tuple(sizes[1:-1]))
    per_sample = forward_flops(model.layers, model.num_classes) + backward_flops(model.layers, model.num_classes)
    per_step = optimizer_step_flops(model.num_params, "sgd", 0.0, 0.0, 0.0)
    return int(compute_flops(np.array([n]), 1, batch, per_sample, per_step)[0])


def one_epoch(board: str, sizes: list[int], n: int, batch: int, workdir: Path) -> tuple[int, float]:
    cfg = LocalTraining(epochs=1, batch_size=batch, lr=0.05)
    image = build_firmware(board, 256 * 1024, required_arena_bytes(sizes, batch))
    rng = np.random.default_rng(0)
    x = rng.random((n, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], n)
    n_params = sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))
    p0 = (rng.standard_normal(n_params) * 0.1).astype(np.float32)
    relu = [True] * (len(sizes) - 2) + [False]
    with SyncDevice(QemuDevice(image, workdir)) as dev:
        dev.write_data(x, y)
        t0 = time.perf_counter()
        res = dev.train(p0, sizes, relu, cfg, batch_order(0, 1, 0, n, 1))
        return res.insns, time.perf_counter() - t0


def main() -> None:
    profiles = load_device_catalog()
    print(
        f"{'profile':<10} {'board':<11} {'model':<22} {'insns':>11} {'fw time':>9} {'cost model':>10} "
        f"{'ratio':>6} {'FLOPs':>10} {'insn/FLOP':>9} {'QEMU wall':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, target in TARGETS.items():
            prof = profiles[name]
            for model, (sizes, n, batch) in MODELS.items():
                insns, wall = one_epoch(target.board, sizes, n, batch, Path(tmp) / f"{name}-{len(sizes)}-{sizes[0]}")
                flops = cost_model_flops(sizes, n, batch)
                fw_s = insns * target.cpi / prof.clock_hz
                cm_s = flops / prof.flops_per_s
                print(
                    f"{name:<10} {target.board:<11} {model:<22} {insns:>11,} {fw_s:>8.3f}s {cm_s:>9.3f}s "
                    f"{fw_s / cm_s:>6.2f} {flops:>10,} {insns / flops:>9.2f} {wall:>8.3f}s"
                )


if __name__ == "__main__":
    main()
