"""Seconds per round of decentralized learning at 1 000 devices (issue #4, benchmark 4).

MNIST, MLP 784-16-10, 1 000 devices x 60 samples, 1 local epoch, batch 10, on a random
geometric graph (benchmarks/specs/decentralized_scale.yaml); DecFedAvg (Metropolis-Hastings
mixing as one sparse matrix product) and gossip (push to a random neighbour, average with own).
Every device's model is evaluated on 2 000 test images every round. Each algorithm runs in a
fresh process. Above 1 000 devices the square grows with the fleet (same density) and devices
share samples (``partition.overlap``).

    .venv/bin/python benchmarks/bench_decentralized.py [--rounds 3] [--devices 1000]
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
SPEC = HERE / "specs" / "decentralized_scale.yaml"


def measure(algorithm: str, devices: int, rounds: int) -> dict:
    from tinytwin.engines.runner import start_run
    from tinytwin.spec.load import load_spec
    from tinytwin.store.db import RunStore

    sets = [f"algorithm.name={algorithm}", f"fleet.groups.0.count={devices}", f"rounds={rounds}"]
    if devices > 1000:  # the same density as 1 000 devices in 1 km², devices sharing MNIST's 60 000 samples
        side = 1000.0 * (devices / 1000) ** 0.5
        sets += [f"topology.area_m=[{side},{side}]", "partition.overlap=true"]
    spec, text = load_spec(SPEC, sets)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = start_run(spec, text, Path(tmp), SPEC.parent, report=False)
        wall = time.perf_counter() - t0
        store = RunStore(out.run_dir / "results.db")
        rows = store.rounds(store.run_info().run_id)
    per_round = [r["wall_time_s"] for r in rows]
    steady = sorted(per_round[1:] or per_round)
    return {
        "algorithm": algorithm,
        "devices": devices,
        "rounds": rounds,
        "seconds_per_round": [round(t, 3) for t in per_round],
        "steady_seconds_per_round": round(steady[len(steady) // 2], 3),
        "wall_s_incl_setup": round(wall, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "final_mean_accuracy": out.summary.get("final_accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--algorithms", nargs="+", default=["decfedavg", "gossip"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.devices, args.rounds)))
        return
    for algorithm in args.algorithms:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                algorithm,
                "--devices",
                str(args.devices),
                "--rounds",
                str(args.rounds),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(json.dumps({"algorithm": algorithm, "error": proc.stderr.strip().splitlines()[-3:]}), flush=True)
            continue
        print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
