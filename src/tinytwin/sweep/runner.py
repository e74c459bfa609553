"""Starting and resuming a sweep: the sweep folder, its index, and handing runs to an executor.

Layout of a sweep folder::

    SWEEP_DIR/index.db          the index (tinytwin.sweep.index)
    SWEEP_DIR/sweep.yaml        the grid, seeds and twin, for people (the index is the truth)
    SWEEP_DIR/runs/c00-r0/      one ordinary run folder per run (spec.yaml, results.db)
    SWEEP_DIR/report.md, cells.csv, paired.csv, curves.png   (tinytwin.sweep.report)

Resuming: a run whose index row is ``complete`` is skipped. A run the index does not know
finished but whose own database says ``complete`` (the sweep died between the run's last
commit and the index write) is recorded from its database, not rerun. Any other run
folder is partial; it is removed and the run starts over, which in the simulator gives
bit for bit the run an uninterrupted sweep makes.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tinytwin.errors import TinyTwinError
from tinytwin.sweep.executors import make_executor
from tinytwin.sweep.grid import RunPlan, SweepPlan
from tinytwin.sweep.index import INDEX_NAME, SweepIndex
from tinytwin.sweep.worker import unpack_run

#: Called after every recorded run with (result, runs finished so far, total runs).
ProgressFn = Callable[[dict[str, Any], int, int], None]
TWINS = ("simulate", "emulate")


@dataclass(frozen=True)
class SweepOptions:
    """How to execute: the twin, local workers, Ray (None: the process pool) and emulation pacing."""

    twin: str = "simulate"
    workers: int = 1
    ray: str | None = None
    time_scale: float = 0.01
    sequential: bool = False

    def check(self) -> None:
        if self.twin not in TWINS:
            raise TinyTwinError(f"--twin must be one of {', '.join(TWINS)}, not {self.twin!r}")
        if self.workers < 1:
            raise TinyTwinError(f"--workers must be >= 1 (got {self.workers})")
        if self.time_scale < 0:
            raise TinyTwinError("--time-scale must be >= 0")


def new_sweep_dir(out: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"{name}-sweep-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = out / f"{name}-sweep-{stamp}-{suffix}"
    return path


def start_sweep(
    plan: SweepPlan,
    runs: list[RunPlan],
    options: SweepOptions,
    out: Path,
    progress: ProgressFn | None = None,
    sweep_dir: Path | None = None,
) -> Path:
    """Create the sweep folder and index (after every check, Ray included), then run every run."""
    options.check()
    if options.twin == "emulate":
        _check_emulatable(plan, runs)
    executor = make_executor(options.workers, options.ray, options.sequential)
    try:
        sweep_dir = sweep_dir or new_sweep_dir(out, plan.name)
        (sweep_dir / "runs").mkdir(parents=True, exist_ok=False)
        (sweep_dir / "sweep.yaml").write_text(
            yaml.safe_dump(
                {"name": plan.name, "grid": plan.grid, "seeds": plan.seeds, "twin": options.twin, "runs": len(runs)},
                sort_keys=False,
            )
        )
        index = SweepIndex(sweep_dir / INDEX_NAME)
        try:
            index.create(plan, runs, options.twin, {"time_scale": options.time_scale})
            _execute(sweep_dir, index, executor, progress)
        finally:
            index.close()
    finally:
        executor.close()
    return sweep_dir


def resume_sweep(sweep_dir: Path, options: SweepOptions, progress: ProgressFn | None = None) -> Path:
    """Finish a sweep that was killed: skip finished runs, rerun the rest (``twin`` comes from the index)."""
    index = SweepIndex.open_existing(sweep_dir)
    try:
        index.meta()  # refuses an index.db that holds no sweep
        counts = index.counts()
        if counts.get("complete", 0) == sum(counts.values()):
            raise TinyTwinError(
                f"{sweep_dir} is already complete ({counts.get('complete', 0)} runs); nothing to resume"
            )
        options.check()
        executor = make_executor(options.workers, options.ray, options.sequential)
        try:
            _execute(sweep_dir, index, executor, progress)
        finally:
            executor.close()
    finally:
        index.close()
    return sweep_dir


def _check_emulatable(plan: SweepPlan, runs: list[RunPlan]) -> None:
    from tinytwin.emulate.coordinator import check_emulatable
    from tinytwin.spec.load import validate_spec
    from tinytwin.sweep.grid import run_raw

    for run in runs[:: plan.seeds]:
        check_emulatable(validate_spec(run_raw(plan.base, run.overrides, run.seed)))


def _execute(sweep_dir: Path, index: SweepIndex, executor: Any, progress: ProgressFn | None) -> None:
    """Run every run that is not complete, recording each result in the index as it arrives."""
    meta = index.meta()
    plan: SweepPlan = meta["plan"]
    total = len(index.plans())
    todo = []
    for run in index.plans(["pending", "running", "failed"]):
        run_dir = sweep_dir / "runs" / run.run_id
        finished = _finished_summary(run_dir)
        if finished is not None:
            index.record({"run_id": run.run_id, "status": "complete", "summary": finished})
            continue
        if run_dir.exists():
            shutil.rmtree(run_dir)
        todo.append(run)
    done = len(index.plans(["complete"]))
    if progress is not None:
        progress({"run_id": None, "status": "resumed"}, done, total)
    base_yaml = yaml.safe_dump(plan.base, sort_keys=False)
    tasks = [
        {
            "run_id": r.run_id,
            "run_dir": str(sweep_dir / "runs" / r.run_id),
            "base_yaml": base_yaml,
            "base_dir": str(plan.base_dir),
            "overrides": r.overrides,
            "seed": r.seed,
            "twin": meta["twin"],
            "time_scale": meta["options"].get("time_scale", 0.01),
        }
        for r in todo
    ]
    index.mark([r.run_id for r in todo], "running")
    finished_count = [done]

    def on_result(result: dict[str, Any]) -> None:
        files = result.pop("files", None)
        if files:  # a Ray task's run folder, made on its own machine
            unpack_run(files, sweep_dir / "runs" / result["run_id"])
        index.record(result)
        finished_count[0] += 1
        if progress is not None:
            progress(result, finished_count[0], total)

    executor.run(tasks, on_result)


def _finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run folder whose own database says it is complete; None otherwise."""
    db = run_dir / "results.db"
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT status, summary_json FROM runs LIMIT 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if row is None or row[0] != "complete" or not row[1]:
        return None
    return json.loads(row[1])
