"""WebAssembly devices inside the emulation twin (issue #19): ``twin: wasm`` devices are just devices.

Bars: FedAvg with WebAssembly devices ends with the simulator's global model (max |Δ| ≤ 1e-6),
accuracy and bytes; their fuel counts reach the results store as device time (operators x
CYCLES_PER_OP / clock); a model too large for the profile's memory is refused before any
process starts, with the numbers, and by the CLI in one line (exit 2).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from conftest import run_cli
from emulate_util import LOSSLESS, QUICK, ROOT, stored_rows
from tinytwin.emulate.centralized import EmuState
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.engines.runner import start_run
from tinytwin.engines.simulate import SimState
from tinytwin.firmware.wasm import CYCLES_PER_OP
from tinytwin.spec.load import load_spec
from tinytwin.store.db import RunStore

WASM = [*LOSSLESS, "fleet.groups.0.count=4", "rounds=3", "fleet.groups.0.twin=wasm"]


def _final_params(run_dir: Path, state: type) -> np.ndarray:
    store = RunStore(run_dir / "results.db")
    try:
        ck = store.checkpoint(store.run_info().run_id)
    finally:
        store.close()
    assert ck is not None
    return state.from_checkpoint(ck[1]).global_params.numpy()


def test_fedavg_with_wasm_devices_equals_the_simulator(tmp_path: Path) -> None:
    sim = start_run(*load_spec(QUICK, WASM), tmp_path / "sim", ROOT / "examples", report=False)
    spec, spec_yaml = load_spec(QUICK, WASM)
    run_dir, summary = start_emulation(
        spec, spec_yaml, tmp_path / "wasm", ROOT / "examples", EmulateOptions(time_scale=0.0), report=False
    )
    worst = float(np.abs(_final_params(run_dir, EmuState) - _final_params(sim.run_dir, SimState)).max())
    assert worst <= 1e-6, worst
    assert abs(summary["final_accuracy"] - sim.summary["final_accuracy"]) < 1e-6  # float32 vs float64 ratio
    rounds, _, _ = stored_rows(run_dir)
    sim_rounds, _, _ = stored_rows(sim.run_dir)
    assert [r["bytes_up"] for r in rounds] == [r["bytes_up"] for r in sim_rounds]
    assert all(r["completed"] == 4 for r in rounds)
    fw = summary["emulate"]["firmware"]
    assert fw["devices"] == 4 and fw["images"][0]["board"] == "wasm32-wasi"
    with sqlite3.connect(run_dir / "results.db") as conn:
        measured = conn.execute("SELECT insns, firmware_compute_s FROM emulate_device_rounds").fetchall()
    assert len(measured) == 12 and all(insns > 100_000 for insns, _ in measured)
    assert all(abs(s - insns * CYCLES_PER_OP / 240e6) < 1e-9 for insns, s in measured)  # ESP32-S3: 240 MHz


def test_model_too_large_for_the_memory_limit_is_refused_in_one_line(tmp_path: Path) -> None:
    # an nRF52840 with 120 000 B of RAM, 64 KiB reserved: 54 464 B for training, enough for the memory
    # plan of the quickstart MLP (49 244 B) but not for a module of at least one 64 KiB page
    sets = ["fleet.groups.0.profile=nrf52840", "fleet.groups.0.overrides.ram_bytes=120000", "rounds=1"]
    out = tmp_path / "runs"
    proc = run_cli("emulate", str(QUICK), "--twin", "wasm", "--out", str(out), *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "fleet group 'esp32' (nrf52840)" in lines[0] and "54464 B memory limit" in lines[0]
    assert "needs 65536 B of linear memory, 11072 B more (arena 22736 B + stack 16384 B" in lines[0]
    assert not out.exists() or not any(out.iterdir())  # no run folder
