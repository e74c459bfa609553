"""Measured power traces: integration and the idle/active fit equal hand calculations.

The synthetic trace (tests/data/power_trace_synthetic.csv) samples every 30 s like seed
004's socket: 4 idle samples at 2.5 W, 6 active at 7.0 W, idle 2.5 and 2.7 W, 4 active at 7.0 W.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import run_cli
from tinytwin.errors import TinyTwinError
from tinytwin.fleet.catalog import load_device_catalog
from tinytwin.fleet.power_trace import Window, fit_power, read_phases, read_trace, round_windows

DATA = Path(__file__).parent / "data"
TRACE = DATA / "power_trace_synthetic.csv"
PHASES = DATA / "power_phases_synthetic.csv"


def test_energy_is_sum_of_power_times_interval():
    tr = read_trace(TRACE)
    # 16 samples x 30 s; by hand: 30 * (4*2.5 + 6*7 + 2.5 + 2.7 + 4*7) = 2556 J
    assert tr.energy_j() == pytest.approx(2556.0)
    assert tr.energy_j() / 3600 == pytest.approx(0.71)  # Wh, the seed's P*dt/3600
    # a window cutting samples in half: [105, 135] = 15 s at 2.5 W + 15 s at 7 W
    assert tr.energy_j(105, 135) == pytest.approx(15 * 2.5 + 15 * 7.0)
    assert tr.mean_power_w(300, 360) == pytest.approx(2.6)


def test_milliamps_at_a_voltage_equal_watts(tmp_path):
    rows = ["timestamp,milliamps"] + [f"{i * 30},{w / 5.0 * 1000:g}" for i, w in enumerate(read_trace(TRACE).watts)]
    path = tmp_path / "ma.csv"
    path.write_text("\n".join(rows) + "\n")
    assert read_trace(path, voltage_v=5.0).energy_j() == pytest.approx(2556.0)


def test_iso_timestamps(tmp_path):
    path = tmp_path / "iso.csv"
    path.write_text("timestamp,watts\n2024-05-01T10:00:00,6\n2024-05-01T10:00:30,6\n2024-05-01T10:01:00,3\n")
    assert read_trace(path).energy_j() == pytest.approx(30 * (6 + 6 + 3))


def test_fit_from_phases_equals_hand_least_squares():
    fit = fit_power(read_trace(TRACE), read_phases(PHASES))
    # windows' mean powers: idle 2.5 and 2.6, active 7.0 and 7.0 -> idle = 2.55, active = 7.0;
    # residuals +-0.05 on the idle windows: sigma^2 = 0.005 / (4 - 2), se = sigma / sqrt(2)
    assert fit.idle_w == pytest.approx(2.55)
    assert fit.active_w == pytest.approx(7.0)
    assert fit.idle_se_w == pytest.approx(0.05 / math.sqrt(2))
    assert fit.active_se_w == pytest.approx(0.05 / math.sqrt(2))
    assert fit.rms_w == pytest.approx(math.sqrt(0.005 / 4))
    assert fit.energy_j == pytest.approx(2556.0)


def test_fit_with_mixed_windows_recovers_the_powers():
    tr = read_trace(TRACE)
    # windows straddling phase edges; active seconds counted by hand from the phases
    windows = [Window(90, 150, 30), Window(0, 90, 0), Window(150, 300, 150), Window(270, 330, 30)]
    fit = fit_power(tr, windows)
    assert fit.idle_w == pytest.approx(2.5)
    assert fit.active_w == pytest.approx(7.0)
    assert fit.rms_w == pytest.approx(0.0, abs=1e-9)


def test_round_windows_follow_the_cost_models_clock():
    rounds = [
        {"round": 1, "sim_time_s": 200.0, "duration_s": 200.0},
        {"round": 2, "sim_time_s": 300.0, "duration_s": 100.0},
    ]
    drs = [
        {"round": 1, "device": 0, "compute_s": 150.0},
        {"round": 1, "device": 1, "compute_s": 10.0},
        {"round": 2, "device": 1, "compute_s": 20.0},
    ]
    assert round_windows(rounds, drs, 0, offset_s=10) == [Window(10, 210, 150), Window(210, 310, 0)]


def test_cannot_separate_with_one_kind_of_window():
    with pytest.raises(TinyTwinError, match="cannot separate"):
        fit_power(read_trace(TRACE), [Window(120, 300, 180), Window(360, 480, 120)])


def test_cli_fit_prints_figures_and_writes_a_loadable_profile(tmp_path):
    out = tmp_path / "calibrated.yaml"
    proc = run_cli(
        "energy", "fit", str(TRACE), "--phases", str(PHASES), "--profile-out", str(out), "--name", "nano-cal",
        "--base", "jetson-nano-cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "idle_w   = 2.5500" in proc.stdout and "active_w = 7.0000" in proc.stdout
    profile = load_device_catalog([out])["nano-cal"]
    assert profile.power.idle_w == pytest.approx(2.55) and profile.power.active_w == pytest.approx(7.0)
    assert "measured: tinytwin energy fit" in profile.sources["power.idle_w"]
    proc = run_cli("energy", "integrate", str(TRACE))
    assert proc.returncode == 0 and "2556.0 J = 0.710 Wh" in proc.stdout


@pytest.mark.parametrize(
    "text,expected",
    [
        ("time,watts\n0,1\n30,1\n", "no 'timestamp' column"),
        ("timestamp,volts\n0,1\n30,1\n", "needs a 'watts' column"),
        ("timestamp,milliamps\n0,100\n30,100\n", "needs the supply voltage"),
        ("timestamp,watts\n0,1\n60,1\n30,1\n", "timestamps must increase; data row 3"),
        ("timestamp,watts\n0,1\n30,abc\n", "'abc' is not a number"),
        ("timestamp,watts\n0,1\n", "at least 2 samples"),
        (None, "trace file not found"),
    ],
    ids=["no-timestamp", "no-power", "no-voltage", "non-monotonic", "not-a-number", "one-sample", "missing-file"],
)
def test_bad_trace_names_what_is_wrong(tmp_path, text, expected):
    path = tmp_path / "trace.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(TinyTwinError) as err:
        read_trace(path)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_input_one_line_exit_2(tmp_path):
    bad = tmp_path / "phases.csv"
    bad.write_text("start_s,end_s\n0,10\n")
    nonmonotonic = tmp_path / "trace.csv"
    nonmonotonic.write_text("timestamp,watts\n0,1\n60,1\n30,1\n")
    for trace, args, expected in [
        (nonmonotonic, ["--phases", str(PHASES)], "timestamps must increase; data row 3"),
        (TRACE, ["--phases", str(bad)], "missing column(s) state"),
        (TRACE, [], "exactly one of --run"),
        (TRACE, ["--phases", str(PHASES), "--offset", "1000"], "outside the trace"),
        (TRACE, ["--run", str(tmp_path / "nope")], "run folder does not exist"),
    ]:
        proc = run_cli("energy", "fit", str(trace), *args)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
