"""Sweep runs as Ray tasks: a local Ray instance (``--ray auto``) or an existing cluster (``--ray HOST:PORT``).

Why Ray is optional: it is a large dependency that only multi-machine sweeps need
(``pip install 'tinytwin[ray]'``). Each run is one task with ``num_cpus=1``, so Ray's
scheduler packs as many runs per node as it has CPUs. Tasks make their run in a local
scratch folder and ship its files back (:mod:`tinytwin.sweep.worker`), so the cluster's
machines need no shared file system: the driver writes every run into the one sweep folder.
"""

from __future__ import annotations

import site
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tinytwin.errors import TinyTwinError
from tinytwin.sweep.worker import execute_task


def _task(task: dict[str, Any]) -> dict[str, Any]:
    """The body of one Ray task: one intra-op thread (the task holds one CPU), then the run."""
    import torch

    torch.set_num_threads(1)
    return execute_task(task)


def _runtime_env() -> dict[str, Any]:
    """Make this tinytwin importable in Ray workers when it runs from a source tree (not installed)."""
    import tinytwin

    src = str(Path(tinytwin.__file__).resolve().parents[1])
    installed = any(src.startswith(p) for p in [*site.getsitepackages(), site.getusersitepackages()])
    return {} if installed else {"env_vars": {"PYTHONPATH": src}}


class RayExecutor:
    """A connection to Ray for the length of one sweep; connect before the sweep folder is made."""

    def __init__(self, address: str, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise TinyTwinError("--ray needs Ray: pip install 'tinytwin[ray]'") from None
        self.ray = ray
        kwargs: dict[str, Any] = {"runtime_env": _runtime_env(), "logging_level": "ERROR", "log_to_driver": False}
        try:
            if address == "auto":  # a fresh local instance, not Ray's own 'auto' (which joins a running one)
                ray.init(num_cpus=workers, include_dashboard=False, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TinyTwinError(f"--ray {address}: cannot connect to Ray ({first})") from None
        self.remote = ray.remote(num_cpus=1, max_retries=0)(_task)

    def run(self, tasks: Sequence[dict[str, Any]], on_result: Callable[[dict[str, Any]], None]) -> None:
        refs = {self.remote.remote({**t, "ship_files": True}): t["run_id"] for t in tasks}
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    result = self.ray.get(ref)
                except Exception as exc:  # the task's worker died
                    result = {"run_id": refs[ref], "status": "failed", "error": f"Ray task failed: {exc!r}"}
                on_result(result)

    def close(self) -> None:
        self.ray.shutdown()


def run_on_ray(
    tasks: Sequence[dict[str, Any]], on_result: Callable[[dict[str, Any]], None], address: str, workers: int
) -> None:
    """Connect, run every task, disconnect (a local ``auto`` instance is stopped with the driver)."""
    executor = RayExecutor(address, workers)
    try:
        executor.run(tasks, on_result)
    finally:
        executor.close()
