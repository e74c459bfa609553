"""The emulation twin's entry points: check, start or resume an emulated run of any family.

A run's algorithm family picks its coordinator — centralized (:mod:`tinytwin.emulate.centralized`:
one server, one process per device), decentralized (:mod:`tinytwin.emulate.dfl_coordinator`:
device-to-device messages) or hierarchical (:mod:`tinytwin.emulate.hier_coordinator`: local
aggregator processes). This module only dispatches; the coordinators share their run
lifecycle (:mod:`tinytwin.emulate.lifecycle`), options (:mod:`tinytwin.emulate.options`) and
summary figures (:mod:`tinytwin.emulate.run_stats`) and never import this module, so the
dispatch adds no import cycle. See docs/emulation.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinytwin.emulate.centralized import Emulation, EmuState, check_centralized_emulatable
from tinytwin.emulate.centralized_run import resume_centralized, start_centralized
from tinytwin.emulate.dfl_coordinator import check_dfl_emulatable
from tinytwin.emulate.dfl_run import resume_dfl_emulation, start_dfl_emulation
from tinytwin.emulate.frame_checks import Coordinator
from tinytwin.emulate.hier_coordinator import check_hier_emulatable
from tinytwin.emulate.hier_run import resume_hier_emulation, start_hier_emulation
from tinytwin.emulate.lifecycle import ProgressFn
from tinytwin.emulate.options import EmulateOptions
from tinytwin.emulate.processes import proc_memory_kb
from tinytwin.emulate.rundir import COORDINATOR_FILE, read_json
from tinytwin.engines.runner import open_resumable
from tinytwin.errors import SpecError, TinyTwinError
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store.files import private_umask

__all__ = [
    "Coordinator",
    "EmulateOptions",
    "Emulation",
    "EmuState",
    "check_emulatable",
    "proc_memory_kb",
    "resume_emulation",
    "start_emulation",
]


def check_emulatable(spec: ExperimentSpec) -> None:
    """Refuse, with the reason, a spec the emulation twin cannot run (before any run folder exists)."""
    if spec.engine.precision != "float32":
        raise SpecError(
            "engine.precision",
            f"{spec.engine.precision!r} is the simulation twin's; emulated devices train in float32 "
            "as the firmware does: remove it (or use simulate)",
        )
    a = spec.algorithm
    if a.family == "decentralized":
        return check_dfl_emulatable(spec)
    if a.family == "hierarchical":
        return check_hier_emulatable(spec)
    return check_centralized_emulatable(spec)


def start_emulation(
    spec: ExperimentSpec,
    spec_yaml: str,
    out: Path,
    base_dir: Path | None,
    options: EmulateOptions | None = None,
    progress: ProgressFn | None = None,
    run_dir: Path | None = None,
    on_prepared: Any = None,
    report: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Check everything, create the run folder, emulate every round, write the report."""
    start = {"decentralized": start_dfl_emulation, "hierarchical": start_hier_emulation}.get(
        spec.algorithm.family, start_centralized
    )
    with private_umask():  # every file of the run, the device processes' included, is 0600
        return start(spec, spec_yaml, out, base_dir, options, progress, run_dir, on_prepared, report)


def resume_emulation(
    run_dir: Path,
    spec: ExperimentSpec | None,
    base_dir: Path | None,
    progress: ProgressFn | None = None,
    on_prepared: Any = None,
    report: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Continue a killed emulation from its last committed round, with the options it was
    started with; device processes still running reconnect, the others start again."""
    with private_umask():
        return _resume(run_dir, spec, base_dir, progress, on_prepared, report)


def _resume(
    run_dir: Path,
    spec: ExperimentSpec | None,
    base_dir: Path | None,
    progress: ProgressFn | None,
    on_prepared: Any,
    report: bool,
) -> tuple[Path, dict[str, Any]]:
    store, info, stored = open_resumable(run_dir, spec, "emulate")
    saved = read_json(run_dir / "emulate" / COORDINATOR_FILE)
    if saved is None:
        store.close()
        raise TinyTwinError(
            f"{run_dir}: emulate/{COORDINATOR_FILE} is missing (the coordinator was killed before "
            "it served its devices); start the run again"
        )
    family = stored.algorithm.family
    if family == "decentralized":  # the devices hold the models
        return resume_dfl_emulation(run_dir, store, info.run_id, stored, saved, base_dir, progress, on_prepared, report)
    if family == "hierarchical":  # local aggregators and their devices
        return resume_hier_emulation(
            run_dir, store, info.run_id, stored, saved, base_dir, progress, on_prepared, report
        )
    return resume_centralized(run_dir, store, info, stored, saved, base_dir, progress, on_prepared, report)
