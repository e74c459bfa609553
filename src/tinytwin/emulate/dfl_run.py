"""Starting and resuming a decentralized emulation: checks, run folder and store, the
coordinator (:class:`tinytwin.emulate.dfl_coordinator.DflEmulation`), the run's end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.core.preflight import check_family
from tinytwin.emulate.dfl_coordinator import DflEmulation, DflOptions, check_dfl_emulatable, log
from tinytwin.emulate.fork_fleet import WIRE_STRIDE
from tinytwin.emulate.lifecycle import (
    ProgressFn,
    coordinator_run,
    create_emulation_run,
    resume_event,
    resume_prepared,
)
from tinytwin.emulate.model_rows import mlp_rows
from tinytwin.emulate.options import EmulateOptions, options_as, options_from_json
from tinytwin.emulate.outcome import finish_peer_run
from tinytwin.engines.experiment import Experiment, prepare
from tinytwin.engines.network import Network
from tinytwin.errors import TinyTwinError
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore


def start_dfl_emulation(
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
    options = options_as(options, DflOptions)
    check_dfl_emulatable(spec)
    if getattr(options, "netns", False):
        raise TinyTwinError(
            "emulate --netns shapes links to a server; decentralized runs use the userspace link shaper only for now"
        )
    exp = prepare(spec, base_dir)
    mlp_rows(exp)
    network = check_family(exp, base_dir)
    if on_prepared is not None:
        on_prepared(exp)
    run_dir, store, run_id = create_emulation_run(spec, spec_yaml, out, run_dir)
    dfl_store.ensure_tables(store)
    a = spec.algorithm
    n_train = np.array([len(q[: a.train_samples] if a.train_samples else q) for q in exp.parts], dtype=np.int64)
    store.add_devices(run_id, exp.device_rows(n_train))
    info = network.describe()
    store.add_events(
        run_id,
        [
            {
                "round": 0,
                "sim_time_s": 0.0,
                "device": None,
                "kind": "topology",
                "detail": f"{info['kind']} topology: {info['devices']} devices, {info['links']} links, "
                f"degree {info['degree_min']}..{info['degree_max']}, "
                f"{info['components']} connected component(s)",
            }
        ],
    )
    wall0 = time.perf_counter()
    with coordinator_run(store, run_id, run_dir, log):
        emu = DflEmulation(exp, network, store, run_id, run_dir, options)
        state = asyncio.run(emu.run(progress))
        summary = emu.summary(state, time.perf_counter() - wall0)
    return finish_peer_run(store, run_id, run_dir, summary, report)


def dfl_options_from_json(data: dict[str, Any]) -> DflOptions:
    """The options a decentralized emulation was started with (``emulate/coordinator.json``)."""
    return options_from_json(data, DflOptions)


def resume_dfl_emulation(
    run_dir: Path,
    store: RunStore,
    run_id: str,
    spec: ExperimentSpec,
    saved: dict[str, Any],
    base_dir: Path | None,
    progress: ProgressFn | None = None,
    on_prepared: Any = None,
    report: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Continue a killed decentralized emulation after its last committed round: the device
    processes (which kept their models and call the coordinator's address again for
    ``reconnect_grace_s``) reconnect and roll back to that round; see docs/emulation.md."""
    options = dfl_options_from_json(saved["options"])

    def load() -> tuple[Experiment, Network]:
        exp = prepare(spec, base_dir)
        return exp, check_family(exp, base_dir)

    (exp, network), ck = resume_prepared(store, run_id, load, on_prepared, exp_of=lambda x: x[0])
    done = ck[0] if ck else 0
    store.add_events(run_id, [resume_event(done, float(ck[1]["st"].get("sim_time_s", 0.0)) if ck else 0.0)])
    wall0 = time.perf_counter()
    with coordinator_run(store, run_id, run_dir, log):
        emu = DflEmulation(exp, network, store, run_id, run_dir, options, resume=True)
        st = emu.restore(ck[1]) if ck else emu.initial_st()
        if not ck:
            emu.offset = WIRE_STRIDE
        state = asyncio.run(emu.run(progress, st))
        summary = emu.summary(state, time.perf_counter() - wall0)
    return finish_peer_run(store, run_id, run_dir, summary, report)
