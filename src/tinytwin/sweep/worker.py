"""One sweep run, as a plain function any executor can call (in-process, process pool, Ray task).

Why a task is a plain dict and the result too: it crosses process and machine boundaries
(pickle, Ray's object store), and must not drag torch objects or open databases along.
A task names its run folder; with ``ship_files`` the run is made in a local temporary
folder and its files travel back in the result, so a Ray worker on another machine needs
no shared file system to put its run into the sweep folder.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tinytwin.errors import TinyTwinError


def pack_run(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every regular file of a run folder (spec, database, emulation logs and keys) with its mode."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mode & 0o777, p.read_bytes())
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def unpack_run(files: dict[str, tuple[int, bytes]], run_dir: Path) -> None:
    """Write a packed run folder under ``run_dir`` (paths must stay inside it; modes kept, e.g. 0600 keys)."""
    root = run_dir.resolve()
    for name, (mode, data) in files.items():
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"{name!r} is outside the run folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)


def init_worker() -> None:
    """Process-pool initializer: one intra-op thread per run, and die with the sweep's process.

    A sweep killed with SIGKILL must not leave orphan runs writing into its folder while a
    resumed sweep reruns them; PR_SET_PDEATHSIG makes the kernel kill the worker with it.
    """
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except OSError:
            pass
    import torch

    torch.set_num_threads(1)


def execute_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one sweep run; never raises: a failure is a result with ``status: failed`` and its error."""
    run_id = task["run_id"]
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix=f"tinytwin-{run_id}-")) if task.get("ship_files") else None
    run_dir = (scratch / run_id) if scratch else Path(task["run_dir"])
    try:
        summary = _run(task, run_dir)
        result: dict[str, Any] = {"run_id": run_id, "status": "complete", "summary": summary}
        result["timing"] = {"started": started, "ended": time.time()}  # for benchmarks/bench_sweep.py
        if scratch:
            result["files"] = pack_run(run_dir)
        return result
    except TinyTwinError as exc:
        return {"run_id": run_id, "status": "failed", "error": str(exc)}
    except Exception as exc:  # a bug in one run must not take the sweep down; its trace is kept
        return {"run_id": run_id, "status": "failed", "error": f"{exc!r}\n{traceback.format_exc()}"}
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(task: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    import yaml

    from tinytwin.spec.load import validate_spec
    from tinytwin.sweep.grid import run_raw

    raw = run_raw(yaml.safe_load(task["base_yaml"]), task["overrides"], task["seed"])
    spec = validate_spec(raw)
    spec_yaml = yaml.safe_dump(raw, sort_keys=False)
    base_dir = Path(task["base_dir"])
    if task["twin"] == "emulate":
        from tinytwin.emulate.coordinator import EmulateOptions, start_emulation

        options = EmulateOptions(time_scale=float(task.get("time_scale", 0.01)))
        _, summary = start_emulation(
            spec, spec_yaml, run_dir.parent, base_dir, options, None, run_dir=run_dir, report=False
        )
        return summary
    from tinytwin.engines.runner import start_run

    return start_run(spec, spec_yaml, run_dir.parent, base_dir, None, run_dir=run_dir, report=False).summary
