"""Run folders: creating a run, resuming one, and finishing it with its report.

A run folder holds ``spec.yaml`` (the effective experiment), ``results.db`` (written as
the run goes), and after the run ``csv/``, ``plots/`` and ``report.html``. It is created
only after the spec, the data and the memory plan have all been checked.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinytwin.core.preflight import check_family
from tinytwin.engines.device import engine_device, training_dtype
from tinytwin.engines.experiment import Experiment, prepare
from tinytwin.engines.simulate import ProgressFn, Simulator
from tinytwin.errors import SpecError, TinyTwinError
from tinytwin.spec.load import validate_spec
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.spec.strict_yaml import parse as parse_yaml
from tinytwin.store.check import check_store
from tinytwin.store.db import SCHEMA, RunInfo, RunStore
from tinytwin.store.dfl import DFL_SCHEMA
from tinytwin.store.files import lock_run_folder, new_private_run_folder, with_private_umask
from tinytwin.store.reader import open_checked
from tinytwin.version import __version__

DB_NAME = "results.db"


@dataclass
class RunOutcome:
    run_dir: Path
    summary: dict[str, Any]
    experiment: Experiment


def new_run_dir(out: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = out / f"{name}-{stamp}-{suffix}"
    return path


@with_private_umask
def start_run(
    spec: ExperimentSpec,
    spec_yaml: str,
    out: Path,
    base_dir: Path | None,
    progress: ProgressFn | None = None,
    run_dir: Path | None = None,
    on_prepared: Any = None,
    report: bool = True,
) -> RunOutcome:
    """Check everything, then create the run folder and simulate every round."""
    exp = prepare(spec, base_dir)
    # a missing GPU, or one asked of a CPU-only engine, is refused before the run folder exists
    engine_device(spec.algorithm.family, spec.algorithm.name, spec.engine.device)
    training_dtype(spec.algorithm.family, spec.algorithm.name, spec.engine.precision)
    network = check_family(exp, base_dir)
    if on_prepared is not None:
        on_prepared(exp)
    run_dir = run_dir or new_run_dir(out, spec.name)
    # 0700 folder, 0600 files; results.db created empty and private before SQLite opens it
    new_private_run_folder(run_dir, {"spec.yaml": spec_yaml.encode(), DB_NAME: b""})
    try:
        store = RunStore(run_dir / DB_NAME)
    except TinyTwinError:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing was run: leave no folder
        raise
    run_id = uuid.uuid4().hex[:12]
    store.create_run(run_id, spec.name, "simulate", spec.seed, spec_yaml, spec.rounds, __version__)
    sim = make_engine(exp, store, run_id, network, base_dir)
    sim.register()
    return _drive(sim, store, run_id, sim.initial_state(), run_dir, progress, report)


def make_engine(
    exp: Experiment, store: RunStore, run_id: str, network: Any = None, base_dir: Path | None = None
) -> Any:
    """The simulation engine of the spec's algorithm family."""
    family = exp.spec.algorithm.family
    if family == "decentralized":
        from tinytwin.engines.decentralized import DecentralizedSimulator

        return DecentralizedSimulator(exp, store, run_id, network)
    if family == "hierarchical":
        from tinytwin.engines.hierarchical import HierarchicalSimulator

        return HierarchicalSimulator(exp, store, run_id, network, base_dir)
    return Simulator(exp, store, run_id)


@with_private_umask
def resume_run(
    run_dir: Path,
    spec: ExperimentSpec | None,
    base_dir: Path | None,
    progress: ProgressFn | None = None,
    on_prepared: Any = None,
    report: bool = True,
) -> RunOutcome:
    """Continue an incomplete run from its last finished round."""
    store, info, stored = open_resumable(run_dir, spec, "simulate")
    if spec is not None:
        if spec.engine.precision != stored.engine.precision:
            store.close()
            raise SpecError(
                "engine.precision",
                f"{spec.engine.precision!r}, but the run started in {stored.engine.precision!r}; "
                "a run keeps its precision: resume it without changing engine.precision",
            )
        stored = stored.model_copy(update={"engine": spec.engine})
    exp = prepare(stored, base_dir)
    network = check_family(exp, base_dir)
    if on_prepared is not None:
        on_prepared(exp)
    sim = make_engine(exp, store, info.run_id, network, base_dir)
    if not isinstance(sim, Simulator):
        from tinytwin.store.dfl import ensure_tables

        ensure_tables(store)
    ck = store.checkpoint(info.run_id)
    state = sim.state_from_checkpoint(ck[1]) if ck else sim.initial_state()
    store.set_status(info.run_id, "running")
    store.add_events(
        info.run_id,
        [
            {
                "round": state.round,
                "sim_time_s": state.sim_time_s,
                "device": None,
                "kind": "resume",
                "detail": f"resumed after round {state.round}",
            }
        ],
    )
    return _drive(sim, store, info.run_id, state, run_dir, progress, report)


def open_resumable(run_dir: Path, spec: ExperimentSpec | None, twin: str) -> tuple[RunStore, RunInfo, ExperimentSpec]:
    """Open an incomplete run of ``twin`` for resuming: its store, its ``runs`` row and its own spec.

    Refuses (one line) a folder without a database, a damaged or altered database, a run of
    another twin, an experiment file other than the run's own, and a run that is already
    complete — all checked read-only, so a refused database is left exactly as it was.
    """
    db = run_dir / DB_NAME
    if not db.is_file():
        raise TinyTwinError(f"{run_dir} is not a tinytwin run folder (no {DB_NAME}); pass the folder a run created")
    info, stored = _check_resumable(run_dir, spec, twin)
    lock_run_folder(run_dir)  # after the read-only checks: a refused folder is never written to
    store = RunStore(db)
    return store, info, stored


def _check_resumable(run_dir: Path, spec: ExperimentSpec | None, twin: str) -> tuple[RunInfo, ExperimentSpec]:
    """Everything :func:`open_resumable` refuses, found through a read-only connection."""
    reader, info = open_checked(run_dir)
    try:
        if info.twin != twin:
            command = {"simulate": "tinytwin run --resume", "emulate": "tinytwin emulate --resume"}.get(info.twin)
            raise TinyTwinError(
                f"{run_dir} is a {info.twin} run, not a {twin} run"
                + (f"; resume it with `{command}`" if command else "")
            )
        try:
            stored = validate_spec(parse_yaml(info.spec_yaml, f"{run_dir / DB_NAME} (runs.spec_yaml)"))
        except TinyTwinError as exc:
            raise TinyTwinError(f"{run_dir}: the experiment stored in {DB_NAME} is invalid: {exc}") from None
        # engine (device, threads, chunks) says how to compute, not what: a run may resume elsewhere
        if spec is not None and spec.model_dump(exclude={"engine"}) != stored.model_dump(exclude={"engine"}):
            raise TinyTwinError(
                f"the experiment file differs from the one {run_dir} was started with; "
                f"resume with the run's own spec ({run_dir / 'spec.yaml'})"
            )
        if info.status == "complete":
            raise TinyTwinError(f"{run_dir} is already complete ({info.rounds_done} rounds); nothing to resume")
        check_store(reader.conn, run_dir, SCHEMA, whole=False)  # the checkpoints table too, this time
        if stored.algorithm.family != "centralized" and info.rounds_done > 0:  # resuming would recreate them empty
            check_store(reader.conn, run_dir, DFL_SCHEMA, whole=False)
    finally:
        reader.close()
    return info, stored


def _drive(
    sim: Any, store: RunStore, run_id: str, state: Any, run_dir: Path, progress: ProgressFn | None, report: bool = True
) -> RunOutcome:
    wall0 = time.perf_counter()
    try:
        state = sim.run(state, progress)
    except BaseException:
        try:
            store.set_status(run_id, "incomplete")
        except TinyTwinError:  # e.g. the disk is full: keep the error that stopped the run
            pass
        store.close()
        raise
    summary = sim.summary(state, time.perf_counter() - wall0)
    store.finish_run(run_id, "complete", summary)
    store.close()
    if not report:  # sweeps and benchmarks: `tinytwin report RUN_DIR` renders it later
        return RunOutcome(run_dir, summary, sim.exp)
    from tinytwin.report.html import write_report  # matplotlib is only needed here

    if isinstance(sim, Simulator):
        write_report(run_dir)
    else:
        from tinytwin.report.dfl import write_dfl_extras

        write_dfl_extras(run_dir)
    return RunOutcome(run_dir, summary, sim.exp)
