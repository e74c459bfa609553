"""Wall time of an N-run sweep of the quickstart: sequential vs local process pool vs Ray (local).

Each mode runs in a fresh Python process (so each pays its own interpreter start and torch
import, as a user's `tinytwin sweep` would) and sweeps N replicates of
examples/quickstart.yaml (one grid cell, seeds 42..42+N-1, no report). Per run it records:

- ``run_s``: the run's own simulation loop (its summary's ``wall_time_s``);
- ``overhead_s``: everything else that run cost between a worker picking it up and the
  driver recording it: spec validation, data and partition, run folder and database,
  (Ray: shipping the files back) and the trip back to the driver.

Prints one JSON object per mode, then a table.

    .venv/bin/python benchmarks/bench_sweep.py [--runs 48] [--rounds 30] [--workers 2] [--modes sequential pool ray]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("sequential", "pool", "ray")


def child(mode: str, runs: int, rounds: int, workers: int) -> dict:
    """Runs inside the mode's own process: one sweep, timed from inside the driver."""
    t_import = time.perf_counter()
    from tinytwin.sweep.grid import build_plan
    from tinytwin.sweep.runner import SweepOptions, start_sweep

    arrivals: list[tuple[float, dict]] = []

    def on_run(result: dict, done: int, total: int) -> None:
        if result.get("run_id"):
            arrivals.append((time.time(), result))

    plan, run_plans = build_plan(REPO / "examples" / "quickstart.yaml", [f"rounds={rounds}"], {}, runs)
    options = SweepOptions(
        workers=1 if mode == "sequential" else workers,
        ray="auto" if mode == "ray" else None,
        sequential=mode == "sequential",
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        start_sweep(plan, run_plans, options, Path(tmp), on_run)
        sweep_s = time.perf_counter() - t0
    ok = [r for _, r in arrivals if r["status"] == "complete"]
    run_s = [r["summary"]["wall_time_s"] for r in ok]
    overhead = [t - r["timing"]["started"] - r["summary"]["wall_time_s"] for t, r in arrivals if r in ok]
    return {
        "mode": mode,
        "runs": runs,
        "rounds": rounds,
        "workers": options.workers,
        "complete": len(ok),
        "import_s": round(t0 - t_import, 3),
        "sweep_s": round(sweep_s, 3),
        "run_s_median": round(statistics.median(run_s), 4),
        "overhead_s": {
            "min": round(min(overhead), 4),
            "median": round(statistics.median(overhead), 4),
            "max": round(max(overhead), 4),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=30, help="rounds per run (the quickstart has 30)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.runs, args.rounds, args.workers)))
        return
    rows = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--child", mode, "--runs", str(args.runs), "--rounds", str(args.rounds)]
        t0 = time.perf_counter()
        proc = subprocess.run([*cmd, "--workers", str(args.workers)], capture_output=True, text=True, check=False)
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{mode} failed:\n{proc.stderr[-2000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"process_s": round(total, 3)}
        print(json.dumps(row))
        rows.append(row)
    print(
        f"\n{'mode':<11}{'runs':>5}{'process s':>11}{'sweep s':>9}{'run s (med)':>13}  overhead per run min/med/max s"
    )
    for r in rows:
        o = r["overhead_s"]
        print(
            f"{r['mode']:<11}{r['complete']:>5}{r['process_s']:>11.2f}{r['sweep_s']:>9.2f}{r['run_s_median']:>13.3f}"
            f"  {o['min']:.3f} / {o['median']:.3f} / {o['max']:.3f}"
        )


if __name__ == "__main__":
    main()
