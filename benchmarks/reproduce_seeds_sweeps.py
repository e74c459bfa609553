"""The seed reproductions (benchmarks/reproduce_seeds.py) over several seeds, as sweeps with 95 % CIs.

reproduce_seeds.py runs each arm of each seed experiment once (seed of its spec). This
script runs every arm as a sweep of ``--seeds`` replicates (seed, seed+1, ...; the same seeds
in every arm, so arms are paired) and then compares the arms as groups: per-arm means with
t and bootstrap 95 % intervals and paired tests between arms (tinytwin/sweep/groups.py).

    .venv/bin/python benchmarks/reproduce_seeds_sweeps.py --dry-run              # the plan, nothing run
    .venv/bin/python benchmarks/reproduce_seeds_sweeps.py seed004 --seeds 5 --workers 2
    .venv/bin/python benchmarks/reproduce_seeds_sweeps.py --quick --ray auto     # everything, fewer rounds

Heavy: the full set is (number of arms) x seeds runs of up to 150 rounds each (hours on
2 cores). Output: runs/reproduce-sweeps/<experiment>/<arm>/ (one sweep folder per arm,
resumed if it exists) and runs/reproduce-sweeps/<experiment>/groups.md (+ CSV, PNG).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_seeds import EXAMPLES, EXPERIMENTS, QUICK_ROUNDS, REPO  # noqa: E402


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()


def run_arm(spec_file: str, sets: list[str], seeds: int, sweep_dir: Path, args: argparse.Namespace) -> list[Path]:
    """One arm as a sweep (resumed if its folder exists); returns its run folders."""
    from tinytwin.sweep.grid import build_plan
    from tinytwin.sweep.index import INDEX_NAME, SweepIndex
    from tinytwin.sweep.runner import SweepOptions, resume_sweep, start_sweep

    options = SweepOptions(workers=args.workers, ray=args.ray)
    if (sweep_dir / INDEX_NAME).is_file():
        index = SweepIndex(sweep_dir / INDEX_NAME)
        counts = index.counts()
        index.close()
        if counts.get("complete", 0) < sum(counts.values()):
            resume_sweep(sweep_dir, options)
    else:
        plan, runs = build_plan(EXAMPLES / spec_file, sets, {}, seeds)
        start_sweep(plan, runs, options, sweep_dir.parent, sweep_dir=sweep_dir)
    return sorted(p for p in (sweep_dir / "runs").iterdir() if p.is_dir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", choices=[*EXPERIMENTS, []], help="default: all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray", default=None, help="'auto' or HOST:PORT (default: the local process pool)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (as reproduce_seeds.py --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="override every arm's rounds (smoke tests)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "reproduce-sweeps")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    args = parser.parse_args()
    from tinytwin.sweep.groups import compare_groups

    total = 0
    for name in args.experiments or list(EXPERIMENTS):
        rounds = args.rounds or (QUICK_ROUNDS[name] if args.quick else None)
        groups: dict[str, list[Path]] = {}
        for label, spec_file, overrides in EXPERIMENTS[name]:
            sets = [*overrides, *([f"rounds={rounds}"] if rounds else [])]
            sweep_dir = args.out / name / slug(label)
            total += args.seeds
            print(f"{name} / {label}: {spec_file} {' '.join(sets)} x {args.seeds} seeds -> {sweep_dir}", flush=True)
            if not args.dry_run:
                groups[label] = run_arm(spec_file, sets, args.seeds, sweep_dir, args)
        if groups:
            print(f"  {compare_groups(groups, args.out / name)}", flush=True)
    print(f"{total} runs{' planned' if args.dry_run else ''}")


if __name__ == "__main__":
    main()
