"""Fuzz the experiment-file loader with the full seeded set (issue #18) and print the counts.

    PYTHONPATH=src python benchmarks/fuzz_specs.py --count 1000 --cli 30

Every file goes through what ``tinytwin plan`` does, in this process (20 s alarm each); the
first ``--cli`` files built from the fast examples also go through the real
``tinytwin run --set rounds=1`` (120 s timeout each). A crash is any exception other than a
one-line TinyTwinError (a user would see a traceback); exit status 1 if any crash, hang or
leftover run folder is found. Files are a pure function of (seed, index): replay one with
``spec_fuzz.fuzz_case(seed, index, bases)``.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from spec_fuzz import FAST_EXAMPLES, FuzzCase, base_specs, check_in_process, fuzz_cases  # noqa: E402

DATA = Path(
    os.environ.get("TINYTWIN_SHARED_DATA")
    or next((str(p) for p in (REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data") if p.is_dir()), ".")
)


def cli_outcome(case: FuzzCase, folder: Path) -> str:
    """``refused`` / ``ran`` / ``timeout`` / ``crash: ...`` / ``leftover`` for one real CLI run."""
    spec = folder / f"cli-{case.index}.yaml"
    spec.write_bytes(case.data)
    out = folder / f"runs-{case.index}"
    cmd = [sys.executable, "-m", "tinytwin.cli", "run", str(spec), "--set", "rounds=1", "--out", str(out)]
    try:
        proc = subprocess.run([*cmd, "--quiet", "--no-report"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "timeout"
    left = list(out.iterdir()) if out.exists() else []
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if "Traceback" in proc.stderr or proc.returncode not in (0, 2):
        return f"crash: rc {proc.returncode} {proc.stderr[-300:]!r}"
    if proc.returncode == 2:
        if len(lines) != 1:
            return f"crash: {len(lines)} lines"
        return "leftover" if left else "refused"
    return "ran" if len(left) == 1 else "leftover"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--cli", type=int, default=30)
    args = ap.parse_args()
    bases = base_specs(data_dir=DATA)
    failures: list[str] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        outcomes: collections.Counter[str] = collections.Counter()
        by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for case in fuzz_cases(args.seed, args.count, bases):
            result = check_in_process(case, folder)
            kind = result.split(":")[0]
            outcomes[kind] += 1
            for m in case.mutations:
                by_kind[m.split()[0]][kind] += 1
            if kind not in ("refused", "accepted"):
                failures.append(f"in-process file {case.index} ({case.base}; {', '.join(case.mutations)}): {result}")
        t_in = time.perf_counter() - t0
        cli_cases = fuzz_cases(args.seed, args.cli, base_specs(FAST_EXAMPLES, DATA))
        with ThreadPoolExecutor(2) as pool:
            cli = list(pool.map(lambda c: (c, cli_outcome(c, folder)), cli_cases))
        cli_counts = collections.Counter(r.split(":")[0] for _, r in cli)
        failures += [
            f"cli file {c.index} ({', '.join(c.mutations)}): {r}" for c, r in cli if r not in ("refused", "ran")
        ]
    print(f"seed {args.seed}: {args.count} files in process in {t_in:.1f} s: {dict(outcomes)}")
    for kind, counts in sorted(by_kind.items()):
        print(f"  {kind:12s} {dict(counts)}")
    print(
        f"{args.cli} files through `tinytwin run --set rounds=1` in {time.perf_counter() - t0 - t_in:.1f} s: {dict(cli_counts)}"
    )
    for line in failures:
        print("FAIL", line)
    print(f"failures: {len(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
