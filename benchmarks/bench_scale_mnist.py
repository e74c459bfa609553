"""Seconds per round and peak RSS at fleet scale (issue #4, benchmark 2).

MNIST (../shared/data/mnist.npz), MLP 784-16-10, N devices x 60 samples (IID, devices may share samples beyond 1 000 devices), 1 local epoch,
batch 10, every device every round, evaluation of the global model on the 10 000 test images
every round. Each fleet size runs in a fresh process. Prints one JSON object per size.

    .venv/bin/python benchmarks/bench_scale_mnist.py --sizes 1000 10000 [100000] --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC = HERE / "specs" / "mnist_scale.yaml"


def measure(devices: int, rounds: int) -> dict:
    from tinytwin.engines.runner import start_run
    from tinytwin.spec.load import load_spec
    from tinytwin.store.db import RunStore

    samples = 60
    spec, text = load_spec(SPEC, [f"fleet.groups.0.count={devices}", f"rounds={rounds}"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = start_run(spec, text, Path(tmp), SPEC.parent, report=False)
        wall = time.perf_counter() - t0
        store = RunStore(out.run_dir / "results.db")
        rows = store.rounds(store.run_info().run_id)
    per_round = [r["wall_time_s"] for r in rows]
    return {
        "devices": devices,
        "samples_per_device": samples,
        "rounds": rounds,
        "seconds_per_round": [round(t, 3) for t in per_round],
        "steady_seconds_per_round": round(sorted(per_round[1:] or per_round)[len(per_round[1:] or per_round) // 2], 3),
        "wall_s_incl_setup": round(wall, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "final_accuracy": out.summary["final_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.rounds)))
        return
    for n in args.sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--rounds", str(args.rounds)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            print(json.dumps({"devices": n, "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
