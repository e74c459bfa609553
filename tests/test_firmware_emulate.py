"""Firmware twin inside the emulation twin (issue #6): firmware devices are just devices.

Bars: FedAvg on digits with 10 firmware devices in QEMU reaches the simulation twin's final
accuracy within 1 pp with identical bytes per round; a device whose arena overflows at run
time faults, is recorded as failed and every round completes with the others; a fleet can
mix firmware and numpy devices; the firmware's instruction counts reach the results store.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from emulate_util import LOSSLESS, QUICK, ROOT, stored_rows
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.engines.runner import start_run
from tinytwin.spec.load import load_spec

_rows = stored_rows


def _simulated_and_firmware(tmp_path: Path, spec_file: Path, sets: list[str]):
    """The simulator's run of ``spec_file`` with ``sets`` and the emulation of the same spec with
    every device on firmware: (simulated run, firmware run folder, firmware summary)."""
    sim = start_run(*load_spec(spec_file, sets), tmp_path / "sim", spec_file.parent, report=False)
    spec, spec_yaml = load_spec(spec_file, sets)
    opts = EmulateOptions(time_scale=0.0, firmware_all=True)
    run_dir, summary = start_emulation(spec, spec_yaml, tmp_path / "fw", spec_file.parent, opts, report=False)
    return sim, run_dir, summary


def _measured(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(run_dir / "results.db") as conn:
        return conn.execute(
            "SELECT round, device, insns, firmware_compute_s, qemu_rss_kb "
            "FROM emulate_device_rounds ORDER BY round, device"
        ).fetchall()


def test_firmware_fleet_matches_the_simulator(tmp_path: Path) -> None:
    sim, run_dir, summary = _simulated_and_firmware(tmp_path, QUICK, LOSSLESS + ["rounds=10"])
    assert abs(summary["final_accuracy"] - sim.summary["final_accuracy"]) <= 0.01
    rounds, _, events = _rows(run_dir)
    sim_rounds, _, _ = _rows(sim.run_dir)
    assert [r["bytes_up"] for r in rounds] == [r["bytes_up"] for r in sim_rounds]
    assert [r["bytes_down"] for r in rounds] == [r["bytes_down"] for r in sim_rounds]
    assert all(r["completed"] == 10 for r in rounds)
    fw = summary["emulate"]["firmware"]
    assert fw["devices"] == 10 and fw["images"][0]["board"] == "mps2-an386"
    measured = _measured(run_dir)
    assert len(measured) == 100 and all(m[2] > 1_000_000 and m[4] > 0 for m in measured)
    # Device time = counted instructions x the board's CPI / the profile's clock (ESP32-S3: 240 MHz).
    assert all(abs(m[3] - m[2] * 1.25 / 240e6) < 1e-9 for m in measured)
    assert summary["emulate"]["devices_with_torch"] == 0


def test_runtime_arena_overflow_is_a_recorded_failure(tmp_path: Path) -> None:
    spec, spec_yaml = load_spec(QUICK, LOSSLESS[1:] + ["fleet.groups.0.count=4", "rounds=2"])
    run_dir, summary = start_emulation(
        spec,
        spec_yaml,
        tmp_path,
        ROOT / "examples",
        EmulateOptions(time_scale=0.0, round_timeout_s=60, firmware_all=True, firmware_arena_override={1: 4096}),
        report=False,
    )
    rounds, dev_rows, events = _rows(run_dir)
    faults = [e for e in events if e["kind"] == "firmware_fault"]
    assert {e["device"] for e in faults} == {1} and {e["round"] for e in faults} == {1, 2}
    assert all("arena" in e["detail"] and "need=" in e["detail"] for e in faults)
    assert all(r["completed"] == 3 and r["test_accuracy"] is not None for r in rounds)
    assert {d["status"] for d in dev_rows if d["device"] == 1} == {"firmware_fault"}


def test_mixed_fleet_of_firmware_and_numpy_devices(tmp_path: Path) -> None:
    spec_file = tmp_path / "mixed.yaml"
    spec_file.write_text(
        QUICK.read_text().replace(
            "      link: wifi\n",
            "      link: wifi\n"
            "    - name: nano\n      profile: nrf52840\n      count: 3\n      link: ble\n      twin: firmware\n",
        )
    )
    spec, spec_yaml = load_spec(spec_file, ["fleet.groups.0.count=3", "rounds=3"])
    run_dir, summary = start_emulation(
        spec, spec_yaml, tmp_path / "runs", tmp_path, EmulateOptions(time_scale=0.0), report=False
    )
    rounds, _, _ = _rows(run_dir)
    assert all(r["completed"] == 6 for r in rounds)
    with_insns = {d for _, d, insns, _, _ in _measured(run_dir) if insns is not None}
    assert with_insns == {3, 4, 5}  # the nrf52840 group, after the three esp32 devices
    assert summary["emulate"]["firmware"]["devices"] == 3


def test_cli_twin_option_is_checked(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tinytwin.cli", "emulate", str(QUICK), "--twin", "fpga", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "--twin must be 'process', 'firmware' or 'wasm'" in proc.stderr + proc.stdout
    assert not any(tmp_path.iterdir())


def test_tinyfedtl_scenario_on_firmware_equals_the_simulator(tmp_path: Path, shared_data: Path) -> None:
    """The seed-003 scenario (examples/tinyfedtl.yaml, shortened): the 256->2 head trained with
    batch 1 on nRF52840 firmware learns exactly what the simulator's devices learn."""
    spec_file = ROOT / "examples" / "tinyfedtl.yaml"
    sets = ["rounds=2", "fleet.groups.0.count=3", "partition.samples_per_device=200", f"dataset.data_dir={shared_data}"]
    sim, run_dir, summary = _simulated_and_firmware(tmp_path, spec_file, sets)
    rounds, _, _ = _rows(run_dir)
    sim_rounds, _, _ = _rows(sim.run_dir)
    # Same correct-prediction counts (the simulator stores float32 accuracies).
    assert [r["test_accuracy"] for r in rounds] == pytest.approx([r["test_accuracy"] for r in sim_rounds], abs=1e-6)
    assert rounds[-1]["test_accuracy"] > 0.6  # cat vs not cat, balanced: chance is 0.5
    image = summary["emulate"]["firmware"]["images"][0]
    assert image["board"] == "mps2-an386" and image["ram_budget"] == 196608 and image["bss"] < 16 * 1024


def test_firmware_devices_carry_out_the_spec_attacks_as_the_simulator_does(tmp_path: Path) -> None:
    """A sign-flipping and a label-flipping device on the C firmware: the firmware fleet's run
    equals the simulator's under the same attacks (the update is attacked by the device's host
    process, the labels in its shard), and the attacks change the outcome."""
    attacks = 'attacks=[{"kind": "scale", "scale": -8.0, "devices": [2]}, {"kind": "label_flip", "devices": [5]}]'
    sets = LOSSLESS + ["rounds=4"]
    clean = start_run(*load_spec(QUICK, sets), tmp_path / "clean", ROOT / "examples", report=False)
    sim, _, summary = _simulated_and_firmware(tmp_path, QUICK, [*sets, attacks])
    assert summary["emulate"]["firmware"]["devices"] == 10
    assert sim.summary["final_accuracy"] < clean.summary["final_accuracy"] - 0.02
    assert abs(summary["final_accuracy"] - sim.summary["final_accuracy"]) <= 0.005
