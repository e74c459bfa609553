"""Starting and resuming a centralized emulation: its network namespaces (``--netns``), the run
folder and store, the coordinator's life (:class:`tinytwin.emulate.centralized.Emulation`), and
the run's end (complete, or failed when it learned nothing)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tinytwin.emulate import measured, outcome, shaper
from tinytwin.emulate.centralized import Emulation, EmuState, check_centralized_emulatable, log
from tinytwin.emulate.firmware_fleet import check_firmware_spec, firmware_groups
from tinytwin.emulate.lifecycle import (
    ProgressFn,
    coordinator_run,
    create_emulation_run,
    resume_event,
    resume_prepared,
)
from tinytwin.emulate.model_rows import model_rows
from tinytwin.emulate.netns import NetnsFleet, require_netns
from tinytwin.emulate.options import EmulateOptions, options_from_json
from tinytwin.emulate.rundir import NETNS_FILE, kill_recorded_devices
from tinytwin.emulate.signals import terminate_raises
from tinytwin.engines.experiment import Experiment, prepare
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store.db import RunInfo, RunStore


def _network(emu_dir: Path, exp: Experiment, options: EmulateOptions, resume: bool) -> NetnsFleet | None:
    """The run's namespaces: a killed run's, if they are all still there, or new ones."""
    if not options.netns:
        return None
    L = exp.fleet.links
    links = [
        shaper.Link(
            float(L.latency_s[d]),
            float(L.up_bps[d]),
            float(L.down_bps[d]),
            float(L.loss[d]),
            int(L.mtu_bytes[d]),
            int(L.header_bytes[d]),
        )
        for d in range(exp.fleet.num_devices)
    ]
    path = emu_dir / NETNS_FILE
    old = NetnsFleet.load(path) if resume and path.is_file() else None
    if old is not None and old.intact():
        return old
    if old is not None:
        kill_recorded_devices(emu_dir)  # they sit in namespaces that are gone; start them anew
    net = NetnsFleet.create(exp.fleet.num_devices, links, options.time_scale, prefix=old.prefix if old else None)
    emu_dir.mkdir(parents=True, exist_ok=True)
    net.save(path)
    return net


def _execute(
    exp: Experiment,
    store: RunStore,
    run_id: str,
    run_dir: Path,
    options: EmulateOptions,
    state: EmuState | None,
    resume: bool,
    progress: ProgressFn | None,
    report: bool,
) -> dict[str, Any]:
    """Emulate the rounds after ``state`` (None: from the initial model); namespaces and device
    processes are removed however this ends, except by SIGKILL (then ``--resume`` adopts them)."""
    wall0 = time.perf_counter()
    net = None
    with coordinator_run(store, run_id, run_dir, log), terminate_raises():
        try:
            measured.ensure_table(store)
            net = _network(run_dir / "emulate", exp, options, resume)
            emu = Emulation(exp, store, run_id, run_dir, options, resume=resume, net=net)
            shaping = emu.shaping()
            log.info("shaping: %s", json.dumps(shaping))
            state = state or emu.initial_state()
            store.add_events(
                run_id,
                [
                    emu._event(
                        state.round,
                        None,
                        "shaping",
                        net.describe()
                        if net
                        else "userspace link shaper (loopback TCP): bandwidth, latency "
                        "and loss all paced by the sender",
                    )
                ],
            )
            state = asyncio.run(emu.run(state, progress, resume))
            summary = emu.summary(state, time.perf_counter() - wall0)
        finally:
            if net is not None:
                net.destroy()
    outcome.finish(store, run_id, summary)
    measured.export_csv(store, run_id, run_dir / "csv")
    store.close()
    if report:
        from tinytwin.report.html import write_report

        write_report(run_dir)
    return summary


def start_centralized(
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
    """A centralized emulation: check everything, create the run folder, emulate every round, write the report."""
    options = options or EmulateOptions()
    if options.netns:
        require_netns()
    check_centralized_emulatable(spec)
    exp = prepare(spec, base_dir)
    model_rows(exp)
    if firmware_groups(exp, options.firmware_all):
        check_firmware_spec(exp)  # e.g. a CNN on firmware devices: refused before the run folder exists
    if on_prepared is not None:
        on_prepared(exp)
    run_dir, store, run_id = create_emulation_run(spec, spec_yaml, out, run_dir)
    store.add_devices(run_id, exp.device_rows())
    return run_dir, _execute(exp, store, run_id, run_dir, options, None, False, progress, report)


def resume_centralized(
    run_dir: Path,
    store: RunStore,
    info: RunInfo,
    stored: ExperimentSpec,
    saved: dict[str, Any],
    base_dir: Path | None,
    progress: ProgressFn | None = None,
    on_prepared: Any = None,
    report: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Continue a killed centralized emulation from its last committed round (``saved``: its
    ``emulate/coordinator.json``)."""
    options = options_from_json(saved["options"])

    def load() -> Experiment:
        if options.netns:
            require_netns()
        exp = prepare(stored, base_dir)
        model_rows(exp)
        return exp

    exp, ck = resume_prepared(store, info.run_id, load, on_prepared)
    state = EmuState.from_checkpoint(ck[1]) if ck else None
    done, clock = (state.round, state.sim_time_s) if state else (0, 0.0)
    store.add_events(info.run_id, [resume_event(done, clock)])
    return run_dir, _execute(exp, store, info.run_id, run_dir, options, state, True, progress, report)
