"""`tinytwin sweep`: a 2 x 2 grid x 3 seeds gives 12 paired runs; a SIGKILLed sweep resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from sweep_util import (
    GRID,
    QUICKSTART,
    TINY,
    complete_count,
    index_rows,
    only_sweep,
    overrides,
    run_spec,
)

CELLS = [(0.05, 0.1), (0.05, 0.5), (0.1, 0.1), (0.1, 0.5)]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_grid_sweep_then_kill_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = run_cli("sweep", str(QUICKSTART), *TINY, *GRID, "--seeds", "3", "--out", str(tmp_path / "full"), "--quiet")
    assert full.returncode == 0, full.stderr
    sweep_dir = only_sweep(tmp_path / "full")
    rows = index_rows(sweep_dir)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"complete"}
    assert sorted((overrides(r)["algorithm.lr"], overrides(r)["partition.alpha"]) for r in rows) == sorted(CELLS * 3)
    for cell in range(4):  # distinct seeds per replicate, the same seeds in every cell (paired arms)
        assert [r["seed"] for r in rows if r["cell"] == cell] == [42, 43, 44]
    for r in rows:  # each run folder ran what the index says
        spec = run_spec(sweep_dir / "runs" / r["run_id"])
        o = overrides(r)
        assert spec["seed"] == r["seed"] == spec["spec"]["seed"]
        assert (spec["spec"]["algorithm"]["lr"], spec["spec"]["partition"]["alpha"]) == (
            o["algorithm.lr"],
            o["partition.alpha"],
        )
        assert spec["spec"]["rounds"] == 2 and r["rounds"] == 2
    assert len({r["final_accuracy"] for r in rows}) > 4  # seeds and settings really differ
    for name in ("report.md", "cells.csv", "paired.csv", "curves.png"):
        assert (sweep_dir / name).stat().st_size > 0
    assert len((sweep_dir / "paired.csv").read_text().splitlines()) == 1 + 4 * 5  # 4 arm pairs x 5 metrics

    # The same sweep, SIGKILLed after a few runs, then resumed.
    out = tmp_path / "killed"
    args = ["sweep", str(QUICKSTART), *TINY, *GRID, "--seeds", "3", "--out", str(out), "--quiet", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "tinytwin.cli", *args], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while (not out.exists() or complete_count(only_sweep(out)) < 2) and time.monotonic() < deadline:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for pid in workers:  # the pool's workers die with the sweep (no orphans writing into its folder)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(pid), f"worker {pid} outlived the killed sweep"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    killed_dir = only_sweep(out)
    before = {r["run_id"]: r for r in index_rows(killed_dir, ("run_id", "status", "finished_at"))}
    done_before = [rid for rid, r in before.items() if r["status"] == "complete"]
    assert 2 <= len(done_before) < 12
    started = {rid: run_spec(killed_dir / "runs" / rid)["started_at"] for rid in done_before}

    resumed = run_cli("sweep", "--resume", str(killed_dir), "--quiet", "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    after = {r["run_id"]: r for r in index_rows(killed_dir, ("run_id", "status", "finished_at"))}
    for rid in done_before:  # finished runs were not rerun
        assert after[rid]["finished_at"] == before[rid]["finished_at"]
        assert run_spec(killed_dir / "runs" / rid)["started_at"] == started[rid]
    assert index_rows(killed_dir) == rows  # the final index equals the uninterrupted sweep's
    assert not (killed_dir / "report.md").exists()  # --no-report
    report = run_cli("sweep-report", str(killed_dir), "--target", "0.5")
    assert report.returncode == 0, report.stderr
    assert "Target accuracy: 0.5." in (killed_dir / "report.md").read_text()

    def accuracy_cells(folder: Path) -> list[str]:  # final-accuracy statistics do not depend on the target
        return [line for line in (folder / "cells.csv").read_text().splitlines() if ",final_accuracy," in line]

    assert len(accuracy_cells(killed_dir)) == 4 and accuracy_cells(killed_dir) == accuracy_cells(sweep_dir)
    again = run_cli("sweep", "--resume", str(killed_dir), "--quiet")
    assert again.returncode == 2 and "already complete" in again.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "algorithm.lrr=0.05,0.1"], "algorithm.lrr: unknown key"),
        (["--grid", "algorithm.lr="], "--grid algorithm.lr: needs a non-empty list of values"),
        (["--grid", "algorithm.lr=0.05,,0.1"], "--grid algorithm.lr: needs a non-empty list of values"),
        (["--seeds", "0"], "--seeds: must be >= 1"),
        (["--grid", "algorithm.lr=0.05,-1"], "algorithm.lr: Input should be greater than 0"),
        (["--grid", "seed=1,2"], "--grid seed: seeds are set with --seeds"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    r = run_cli("sweep", str(QUICKSTART), *TINY, *args, "--out", str(out), "--quiet")
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_bad_sweep_file_and_resume_folder(tmp_path: Path) -> None:
    bad = tmp_path / "sweep.yaml"
    bad.write_text(f"spec: {QUICKSTART}\ngrid:\n  algorithm.lr: []\nseeds: 2\n")
    r = run_cli("sweep", str(bad), "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 2 and "grid.algorithm.lr: needs a non-empty list of values" in r.stderr
    r = run_cli("sweep", "--resume", str(tmp_path), "--quiet")
    assert r.returncode == 2 and "is not a tinytwin sweep folder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_example_sweep_file_plans_its_twelve_paired_runs() -> None:
    from tinytwin.sweep.grid import build_plan, load_sweep_file

    sweep_file = Path(__file__).resolve().parents[1] / "examples" / "sweeps" / "quickstart-lr-alpha.yaml"
    spec_file, grid, seeds = load_sweep_file(sweep_file)
    assert spec_file.resolve() == sweep_file.parents[1] / "quickstart.yaml"
    _, runs = build_plan(spec_file, [], grid, seeds or 1)
    assert len(runs) == 12 and len({r.seed for r in runs}) == 3


def test_sweep_files_and_grid_values_are_read_as_strict_yaml(tmp_path: Path) -> None:
    from tinytwin.errors import SpecError
    from tinytwin.sweep.grid import load_sweep_file, parse_grid_options

    dup = tmp_path / "dup.yaml"
    dup.write_text("spec: a.yaml\nseeds: 2\nseeds: 3\n")
    with pytest.raises(SpecError, match="appears twice"):
        load_sweep_file(dup)
    assert parse_grid_options(["algorithm.lr=0.05,0.1", "name=on,1:30"]) == {
        "algorithm.lr": [0.05, 0.1],
        "name": ["on", "1:30"],  # YAML 1.2 core: text, not True and 90
    }
