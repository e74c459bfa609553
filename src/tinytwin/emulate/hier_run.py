"""Starting and resuming a hierarchical emulation: checks, run folder and store, the global
coordinator (:class:`tinytwin.emulate.hier_coordinator.HierEmulation`), the run's end."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from tinytwin.core.preflight import check_family
from tinytwin.emulate.firmware_fleet import check_firmware_spec, firmware_groups
from tinytwin.emulate.fork_fleet import WIRE_STRIDE
from tinytwin.emulate.hier_coordinator import HierEmulation, HierOptions, check_hier_emulatable, log
from tinytwin.emulate.lifecycle import (
    ProgressFn,
    coordinator_run,
    create_emulation_run,
    resume_event,
    resume_prepared,
)
from tinytwin.emulate.model_rows import model_rows
from tinytwin.emulate.options import EmulateOptions, options_as, options_from_json
from tinytwin.emulate.outcome import finish_peer_run
from tinytwin.emulate.signals import terminate_raises
from tinytwin.engines.experiment import Experiment, prepare
from tinytwin.errors import TinyTwinError
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store.db import RunStore


def start_hier_emulation(
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
    options = options_as(options, HierOptions)
    check_hier_emulatable(spec)
    if options.netns:
        raise TinyTwinError("emulate --netns: hierarchical runs use the userspace link shaper only for now")
    exp = prepare(spec, base_dir)
    model_rows(exp)  # MLPs and the zoo's CNNs (numpy devices)
    if firmware_groups(exp, options.firmware_all):
        check_firmware_spec(exp)  # e.g. a CNN on firmware devices: refused before the run folder exists
    check_family(exp, base_dir)  # aggregator_link
    bad = [d for ds in options.kill_devices.values() for d in ds if not 0 <= int(d) < exp.fleet.num_devices]
    bad += [
        c
        for cs in options.kill_aggregators.values()
        for c in cs
        if not 0
        <= int(c)
        < (len(spec.algorithm.hierarchical.clusters or []) or spec.algorithm.hierarchical.num_clusters)
    ]
    if bad:
        raise TinyTwinError(f"emulate: kill_devices / kill_aggregators name {bad[0]}, which is not in the run")
    if spec.algorithm.hierarchical.orchestration is not None and (options.kill_devices or options.kill_aggregators):
        raise TinyTwinError(
            "emulate: an orchestrated run takes its joins and leaves from failures.join / failures.leave; "
            "kill_devices / kill_aggregators are for runs without orchestration"
        )
    if on_prepared is not None:
        on_prepared(exp)
    run_dir, store, run_id = create_emulation_run(spec, spec_yaml, out, run_dir)
    wall0 = time.perf_counter()
    with coordinator_run(store, run_id, run_dir, log, logging.getLogger("tinytwin.emulate")), terminate_raises():
        emu = HierEmulation(exp, store, run_id, run_dir, options, base_dir)
        emu.sim.register()  # devices and the clusters event, as the simulator writes them
        state = asyncio.run(emu.run(progress))
        summary = emu.summary(state, time.perf_counter() - wall0)
    return finish_peer_run(store, run_id, run_dir, summary, report)


def hier_options_from_json(data: dict[str, Any]) -> HierOptions:
    """The options a hierarchical emulation was started with (``emulate/coordinator.json``)."""
    return options_from_json(data, HierOptions, int_lists=("kill_devices", "kill_aggregators"))


def resume_hier_emulation(
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
    """Continue a killed hierarchical emulation after its last committed round R: the local
    aggregators (which kept their devices and call the GA's address again for
    ``reconnect_grace_s``) reconnect and are adopted, and rounds R + 1 .. are replayed with a
    wire-round offset; see docs/emulation.md."""
    options = hier_options_from_json(saved["options"])

    def load() -> Experiment:
        exp = prepare(spec, base_dir)
        model_rows(exp)
        return exp

    if spec.algorithm.hierarchical.orchestration is not None:
        raise TinyTwinError(
            f"emulate --resume: {run_dir} is an orchestrated run, whose devices move between aggregators; "
            "it cannot be resumed yet: start it again"
        )
    exp, ck = resume_prepared(store, run_id, load, on_prepared)
    done = ck[0] if ck else 0
    wall0 = time.perf_counter()
    with coordinator_run(store, run_id, run_dir, log, logging.getLogger("tinytwin.emulate")), terminate_raises():
        emu = HierEmulation(exp, store, run_id, run_dir, options, base_dir, resume=True)
        st = emu.restore(ck[1]) if ck else emu.sim.initial_state()
        if not ck:
            emu.offset = WIRE_STRIDE
        store.add_events(run_id, [resume_event(done, emu.modelled_s)])
        state = asyncio.run(emu.run(progress, st))
        summary = emu.summary(state, time.perf_counter() - wall0)
    return finish_peer_run(store, run_id, run_dir, summary, report)
