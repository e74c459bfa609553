"""Where a sweep's runs execute: in this process, in a local process pool, or as Ray tasks.

Every executor takes the same task dicts (:mod:`tinytwin.sweep.worker`) and hands each
result to ``on_result`` in the driver process as soon as it arrives, in completion order;
the driver alone writes the index, so executors never touch it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from tinytwin.errors import TinyTwinError
from tinytwin.sweep.worker import execute_task, init_worker

ResultFn = Callable[[dict[str, Any]], None]


def default_workers() -> int:
    """min(2, cores): a sweep shares the machine; ask for more with ``--workers``."""
    return max(1, min(2, os.cpu_count() or 1))


def run_sequential(tasks: Sequence[dict[str, Any]], on_result: ResultFn) -> None:
    """One run after another in this process (the baseline of benchmarks/bench_sweep.py)."""
    for task in tasks:
        on_result(execute_task(task))


def run_pool(tasks: Sequence[dict[str, Any]], on_result: ResultFn, workers: int) -> None:
    """A pool of ``workers`` spawned processes; each imports torch once and runs many tasks.

    Spawned, not forked: the driver may already hold torch's thread pools (the Python API),
    which a forked child must not inherit.
    """
    if not tasks:
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=init_worker)
    try:
        pending = {pool.submit(execute_task, t): t["run_id"] for t in tasks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                run_id = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # the worker process died (out of memory, killed)
                    result = {"run_id": run_id, "status": "failed", "error": f"worker process failed: {exc!r}"}
                on_result(result)
    except BaseException:  # Ctrl-C: drop the queued runs instead of finishing them (resume reruns them)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


class LocalExecutor:
    """The process pool (``workers`` > 1) or this process (``workers`` == 1, or ``sequential``)."""

    def __init__(self, workers: int, sequential: bool = False) -> None:
        self.workers = workers
        self.sequential = sequential or workers == 1

    def run(self, tasks: Sequence[dict[str, Any]], on_result: ResultFn) -> None:
        if self.sequential:
            run_sequential(tasks, on_result)
        else:
            run_pool(tasks, on_result, self.workers)

    def close(self) -> None:
        pass


def make_executor(workers: int, ray: str | None = None, sequential: bool = False) -> Any:
    """The executor a sweep asked for; Ray connects here, before any sweep folder is made."""
    if workers < 1:
        raise TinyTwinError(f"--workers must be >= 1 (got {workers})")
    if ray is not None:
        from tinytwin.sweep.ray_exec import RayExecutor

        if not ray.strip():
            raise TinyTwinError("--ray needs 'auto' or the address of a running Ray cluster (host:port)")
        return RayExecutor(ray.strip(), workers)
    return LocalExecutor(workers, sequential)
