"""Client updates per second and peak memory of the simulation twin at 10, 100 and 1000 devices.

The workload is examples/quickstart.yaml (digits, Dirichlet 0.5, MLP 64-32-10, FedAvg, 2 local
epochs, batch 8) with the device count changed (and partition.min_samples=0: 1000 devices share 1500 samples,
so Dirichlet leaves some devices empty). Each size runs in a fresh process so its peak
RSS is its own. Prints one JSON object per size and a summary table.

    .venv/bin/python benchmarks/bench_simulate_scale.py [--rounds 5] [--sizes 10 100 1000]
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

REPO = Path(__file__).resolve().parents[1]


def measure(devices: int, rounds: int) -> dict:
    """Runs inside the child process."""
    from tinytwin.engines.runner import start_run
    from tinytwin.spec.load import load_spec

    spec, text = load_spec(
        REPO / "examples" / "quickstart.yaml",
        [f"fleet.groups.0.count={devices}", f"rounds={rounds}", "partition.min_samples=0"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = start_run(spec, text, Path(tmp), REPO / "examples")
        wall = time.perf_counter() - t0
        from tinytwin.store.db import RunStore

        store = RunStore(out.run_dir / "results.db")
        rows = store.rounds(store.run_info().run_id)
        loop = sum(r["wall_time_s"] for r in rows)
        updates = sum(r["completed"] for r in rows)
        steady = sorted(r["wall_time_s"] for r in rows[1:])  # round 1 pays one-off warm-up
        steady_s = steady[len(steady) // 2] if steady else loop
    return {
        "devices": devices,
        "rounds": rounds,
        "client_updates": updates,
        "loop_s": round(loop, 3),
        "seconds_per_round": round(loop / rounds, 4),
        "first_round_s": round(rows[0]["wall_time_s"], 4),
        "steady_seconds_per_round": round(steady_s, 4),
        "client_updates_per_s": round(updates / loop, 1),
        "steady_client_updates_per_s": round(rows[-1]["completed"] / steady_s, 1),
        "wall_s_incl_setup_and_report": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "final_accuracy": out.summary["final_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.rounds)))
        return
    results = []
    for n in args.sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--rounds", str(args.rounds)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(json.dumps(result), flush=True)
    print(
        f"\n{'devices':>8} {'s/round':>9} {'steady s/round':>15} {'updates/s':>10} {'steady updates/s':>17} {'peak RSS MB':>12}"
    )
    for r in results:
        print(
            f"{r['devices']:>8} {r['seconds_per_round']:>9} {r['steady_seconds_per_round']:>15} "
            f"{r['client_updates_per_s']:>10} {r['steady_client_updates_per_s']:>17} {r['peak_rss_mb']:>12}"
        )


if __name__ == "__main__":
    main()
