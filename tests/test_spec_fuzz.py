"""Fuzzed experiment files (issue #18): no traceback, no hang, no run folder left by a refusal.

A fast subset of the seeded set in ``benchmarks/fuzz_specs.py``: 60 files through what
``tinytwin plan`` does, in this process, and 10 through the real ``tinytwin run`` command.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from spec_fuzz import FAST_EXAMPLES, FuzzCase, base_specs, check_in_process, fuzz_cases

SEED = 18  # the issue number; any seed must pass


@pytest.fixture(scope="module")
def bases():
    return base_specs(data_dir=SHARED_DATA)


def test_generator_is_seeded_and_varied(bases):
    a, b = fuzz_cases(SEED, 100, bases), fuzz_cases(SEED, 100, bases)
    assert [c.data for c in a] == [c.data for c in b]
    kinds = {m.split()[0] for c in a for m in c.mutations}
    assert {"wrong-type", "huge", "deep", "aliases", "bad-utf8", "duplicate", "delete", "non-finite"} <= kinds
    assert len({c.base for c in a}) >= 10


def test_sixty_fuzzed_files_in_process(tmp_path: Path, bases):
    outcomes = {c.index: check_in_process(c, tmp_path) for c in fuzz_cases(SEED, 60, bases)}
    bad = {i: o for i, o in outcomes.items() if o not in ("refused", "accepted")}
    assert not bad, bad
    assert list(outcomes.values()).count("refused") >= 30  # the mutations do break most files


def _run_cli(case: FuzzCase, folder: Path) -> tuple[FuzzCase, subprocess.CompletedProcess | None, Path]:
    spec = folder / f"fuzz-{case.index}.yaml"
    spec.write_bytes(case.data)
    out = folder / f"runs-{case.index}"
    cmd = [sys.executable, "-m", "tinytwin.cli", "run", str(spec), "--set", "rounds=1", "--out", str(out)]
    try:
        proc = subprocess.run([*cmd, "--quiet", "--no-report"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return case, None, out
    return case, proc, out


def test_ten_fuzzed_files_through_the_cli(tmp_path: Path):
    fast = base_specs(FAST_EXAMPLES, SHARED_DATA)
    cases = fuzz_cases(SEED, 10, fast)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: _run_cli(c, tmp_path), cases))
    codes = []
    for case, proc, out in results:
        label = f"file {case.index} ({case.base}: {', '.join(case.mutations)})"
        assert proc is not None, f"{label} hung"
        assert "Traceback" not in proc.stderr, f"{label}: {proc.stderr}"
        assert proc.returncode in (0, 2), f"{label}: rc {proc.returncode} {proc.stderr}"
        folders = list(out.iterdir()) if out.exists() else []
        if proc.returncode == 2:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert len(lines) == 1, f"{label}: {proc.stderr}"
            assert folders == [], f"{label} left {folders}"
        else:
            assert len(folders) == 1 and (folders[0] / "results.db").is_file(), label
        codes.append(proc.returncode)
    assert 2 in codes
