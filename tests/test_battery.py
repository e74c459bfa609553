"""Batteries (issue #19): charge on the cost model's clock, harvesting, an empty device offline
until recharged — against hand calculations, and the same in the simulator, the emulation and
on firmware boards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_spec
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.engines.runner import start_run
from tinytwin.fleet.battery import Batteries, BatteryState, capacity_joules
from tinytwin.spec.battery import BatterySpec
from tinytwin.spec.load import load_spec
from tinytwin.store.db import RunStore


def _bank(capacity: float, harvest_w: list[float] | float = 0.0, rejoin: float = 0.5) -> Batteries:
    profile = np.asarray(harvest_w if isinstance(harvest_w, list) else [harvest_w] * 24, dtype=float)
    return Batteries(np.array([capacity]), np.array([capacity]), np.array([capacity * rejoin]), profile[None, :])


def test_daily_harvest_is_the_integral_of_the_hourly_profile():
    hours = [0.0] * 24
    hours[6], hours[7], hours[23] = 1.0, 2.0, 4.0
    bank = _bank(1e9, hours)
    # 06:30 -> 07:30: half an hour at 1 W, half an hour at 2 W
    assert bank.harvested_j(6.5 * 3600, 7.5 * 3600)[0] == pytest.approx(1800 * 1 + 1800 * 2)
    # 23:00 on day 0 -> 06:30 on day 1: one hour at 4 W, then nothing before 06:00, then 30 min at 1 W
    assert bank.harvested_j(23 * 3600, 30.5 * 3600)[0] == pytest.approx(3600 * 4 + 1800 * 1)
    # three whole days
    assert bank.harvested_j(0, 3 * 86400)[0] == pytest.approx(3 * 3600 * 7)


def test_a_battery_empties_at_the_hand_calculated_round_and_rejoins_when_recharged():
    """10 J, 4 J per round: 6, 2, then empty after round 3; offline it draws nothing and a
    1 W harvest over 3 s rounds refills it to 5 J (rejoin at 50 %) after two more rounds."""
    bank = _bank(10.0, 1.0)
    state = BatteryState(np.array([10.0]), np.array([False]))
    charges, empties = [], []
    for r in range(1, 6):
        used = np.array([0.0 if state.empty[0] else 4.0 + 3.0])  # 4 J net of the 3 J harvested
        state = bank.after_round(state, used, 3.0 * (r - 1), 3.0 * r)
        charges.append(float(state.charge_j[0]))
        empties.append(bool(state.empty[0]))
    assert charges == pytest.approx([6.0, 2.0, 0.0, 3.0, 6.0])
    assert empties == [False, False, True, True, False]


def test_capacity_in_mah_at_a_voltage():
    assert capacity_joules(BatterySpec(capacity_mah=1000, voltage=3.7)) == pytest.approx(13320.0)
    with pytest.raises(ValueError, match="give the capacity once"):
        BatterySpec(capacity_j=1.0, capacity_mah=1.0)


SPEC = """
name: battery
seed: 4
rounds: 10
dataset: {name: digits}
model: {name: mlp, hidden: [12]}
fleet:
  groups:
    - {name: mains, profile: esp32-s3, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}}
    - {name: cells, profile: nrf52840, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}, twin: TWIN BATTERY}
algorithm: {name: fedavg, lr: 0.1, local_epochs: 1, batch_size: 8}
"""


def _spec(tmp_path: Path, twin: str = "process", battery: str = "") -> Path:
    text = SPEC.replace("TWIN", twin).replace(" BATTERY", f", battery: {battery}" if battery else "")
    return write_spec(tmp_path / f"spec-{twin}-{len(battery)}.yaml", text)


def _read(run_dir: Path) -> tuple[list[dict], list[dict], list[dict]]:
    store = RunStore(run_dir / "results.db")
    try:
        run_id = store.run_info().run_id
        return store.device_rounds(run_id), store.events(run_id), store.battery_rounds(run_id)
    finally:
        store.close()


def test_the_simulator_takes_an_empty_device_offline_at_the_round_its_energy_gives(tmp_path: Path):
    """Hand calculation: from a run without batteries, device 2's energy per round (the cost
    model's figure); with a capacity between the sums of its first 3 and 4 rounds it must
    empty in round 4 and be absent from round 5 on."""
    plain = start_run(*load_spec(_spec(tmp_path), []), tmp_path / "plain", tmp_path, report=False)
    used = np.cumsum([row["energy_j"] for row in _read(plain.run_dir)[0] if row["device"] == 2])
    capacity = float((used[2] + used[3]) / 2)
    spec_file = _spec(tmp_path, battery=f"{{capacity_j: {capacity!r}}}")
    run = start_run(*load_spec(spec_file, []), tmp_path / "cells", tmp_path, report=False)
    rows, events, charges = _read(run.run_dir)
    empties = [(e["round"], e["device"]) for e in events if e["kind"] == "battery_empty"]
    assert (4, 2) in empties
    rounds_of_2 = sorted(row["round"] for row in rows if row["device"] == 2)
    assert rounds_of_2 == [1, 2, 3, 4]
    mine = [c["charge_j"] for c in charges if c["device"] == 2]
    assert mine[:3] == pytest.approx(list(capacity - used[:3]))
    assert mine[3:] == [0.0] * 7
    assert run.summary["battery"]["devices"] == 2 and run.summary["battery"]["empty_at_end"] >= 1
    from tinytwin.report.plots import make_plots

    store = RunStore(run.run_dir / "results.db")
    try:
        plots = make_plots(store, store.run_info().run_id, tmp_path / "plots")
    finally:
        store.close()
    assert plots["battery"].stat().st_size > 10_000  # the state-of-charge figure of the report


@pytest.mark.parametrize("twin", ["process", "firmware"])
def test_twins_agree_on_charge_and_drop_outs(tmp_path: Path, twin: str):
    """A battery that empties and recharges (harvest) gives the same charges, events and
    participation in the simulator and in the emulation (numpy processes, or firmware boards)."""
    battery = "{capacity_j: 0.003, rejoin_at: 0.1, harvest_w: 0.002}"
    spec_file = _spec(tmp_path, twin, battery)
    sim = start_run(*load_spec(spec_file, []), tmp_path / "sim", tmp_path, report=False)
    spec, text = load_spec(spec_file, [])
    run_dir, summary = start_emulation(
        spec, text, tmp_path / "emu", tmp_path, EmulateOptions(time_scale=0.0), report=False
    )
    sim_rows, sim_events, sim_charges = _read(sim.run_dir)
    emu_rows, emu_events, emu_charges = _read(run_dir)
    kinds = ("battery_empty", "battery_recharged")

    def battery_events(events: list[dict]) -> list[tuple]:
        return [(e["round"], e["device"], e["kind"]) for e in events if e["kind"] in kinds]

    assert battery_events(emu_events) == battery_events(sim_events)
    assert {e[2] for e in battery_events(sim_events)} == set(kinds)  # it emptied and came back
    assert [c["charge_j"] for c in emu_charges] == pytest.approx([c["charge_j"] for c in sim_charges], rel=1e-9)
    assert [(r["round"], r["device"]) for r in emu_rows] == [(r["round"], r["device"]) for r in sim_rows]
    assert summary["final_accuracy"] == pytest.approx(sim.summary["final_accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    "battery,algo,expected",
    [
        ("{capacity_j: 1, capacity_mah: 100}", "fedavg", "give the capacity once"),
        ("{voltage: 3.3}", "fedavg", "give the capacity once"),
        ("{capacity_j: 1, initial: 1.5}", "fedavg", "initial"),
        ("{capacity_j: 1, harvest_profile_w: [1, 2]}", "fedavg", "harvest_profile_w"),
        ("{capacity_j: 1}", "gossip", "batteries apply to fedavg and fedprox runs so far"),
    ],
)
def test_bad_battery_is_one_line_exit_2_no_run_folder(tmp_path: Path, battery: str, algo: str, expected: str):
    spec_file = _spec(tmp_path, battery=battery)
    spec_file.write_text(spec_file.read_text().replace("name: fedavg", f"name: {algo}"))
    proc = run_cli("run", str(spec_file), "--out", str(tmp_path / "runs"), "--quiet", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_plan_says_how_many_rounds_a_full_charge_lasts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`tinytwin plan`: capacity ÷ the plan's energy per round (no idle, no harvest), floored."""
    from tinytwin.engines.experiment import prepare
    from tinytwin.engines.planning import plan_groups

    spec_file = _spec(tmp_path, battery="{capacity_j: 0.05}")
    rows = plan_groups(prepare(load_spec(spec_file, [])[0], tmp_path))
    mains, cells = rows
    assert mains["battery_j"] is None and cells["battery_j"] == 0.05
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    proc = run_cli("plan", str(spec_file))
    assert proc.returncode == 0, proc.stderr
    expected = int(0.05 // cells["energy_j"])
    assert f"at most {expected} rounds on a full charge" in proc.stdout
