"""A coordinator killed mid-run (SIGKILL of `tinytwin emulate`) resumes from its results
database; the device processes it left running reconnect, and none is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulate_util import kill_mid_run, resume_after_kill, start_cli, stored_rows, wait_for_round
from netns_util import require_netns_privileges
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.emulate.netns import remove_leftovers
from tinytwin.emulate.rundir import PIDS_FILE, AdoptedProcess, kill_recorded_devices
from tinytwin.spec.load import load_spec

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "examples" / "quickstart.yaml"
SETS = ["fleet.groups.0.count=4", "rounds=8", "fleet.groups.0.link=ble"]


def _device_procs(run_dir: Path) -> dict[int, AdoptedProcess]:
    edir = run_dir / "emulate"
    pids = json.loads((edir / PIDS_FILE).read_text())
    return {int(d): AdoptedProcess(int(p), edir / "devices" / f"d{d}.json") for d, p in pids.items()}


@pytest.mark.parametrize("netns", [False, True], ids=["loopback", "netns"])
def test_killed_coordinator_resumes_and_devices_reconnect(tmp_path: Path, netns: bool) -> None:
    if netns:
        require_netns_privileges()
    coordinator = start_cli(
        "emulate",
        str(QUICK),
        *sum((["--set", s] for s in SETS), []),
        "--time-scale",
        "0.2",
        "--out",
        str(tmp_path),
        "--quiet",
        "--no-report",
        *(["--netns"] if netns else []),
    )
    run_dir = None
    try:
        run_dir = wait_for_round(coordinator, tmp_path, "quickstart-emulate-*", 3, 60, poll_s=0.02)
        assert run_dir is not None, "the emulation did not reach round 3 in 60 s"
        killed = kill_mid_run(coordinator, run_dir, 3, 8)  # the run still marked running
        done = killed.done
        alive = [d for d, p in _device_procs(run_dir).items() if p.poll() is None]
        assert len(alive) == 4, "the device processes outlive their coordinator (they keep calling it)"

        resume_after_kill(run_dir, killed, 8, timeout=120, device_rounds=False)
        info, _, _, events = stored_rows(run_dir, with_info=True)
        assert info.status == "complete" and info.rounds_done == 8
        kinds = [e["kind"] for e in events]
        assert kinds.count("resume") == 1
        reconnected = sorted(e["device"] for e in events if e["kind"] == "reconnect")
        assert reconnected == sorted(alive), events
        assert info.summary["emulate"]["process_starts"] == 0  # nobody had to be started again
        assert "restart" not in kinds

        # Same final accuracy as an uninterrupted run (within 1 percentage point).
        spec, spec_yaml = load_spec(QUICK, SETS)
        _, straight = start_emulation(
            spec, spec_yaml, tmp_path / "straight", ROOT / "examples", EmulateOptions(time_scale=0.0), report=False
        )
        print(
            f"killed after round {done}; {len(reconnected)} devices reconnected; final accuracy resumed "
            f"{info.summary['final_accuracy']:.4f}, uninterrupted {straight['final_accuracy']:.4f}"
        )
        assert abs(info.summary["final_accuracy"] - straight["final_accuracy"]) <= 0.01

        # No orphans: every device process of the run is gone once it completed, and so are
        # the namespaces the killed coordinator left for its successor.
        time.sleep(0.2)
        assert [d for d, p in _device_procs(run_dir).items() if p.poll() is None] == []
        if netns:
            shaping = info.summary["emulate"]["shaping"]
            assert shaping["mode"] == "netns"
            assert remove_leftovers(shaping["prefix"]) == []
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        if run_dir is not None:
            kill_recorded_devices(run_dir / "emulate")


def test_device_gives_up_after_the_grace_period(tmp_path: Path) -> None:
    """A device whose coordinator is gone for longer than its grace period exits (no orphans)."""
    spec, spec_yaml = load_spec(QUICK, ["fleet.groups.0.count=2", "rounds=1"])
    run_dir, _ = start_emulation(
        spec, spec_yaml, tmp_path, ROOT / "examples", EmulateOptions(time_scale=0.0), report=False
    )
    cfg_file = run_dir / "emulate" / "devices" / "d0.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["reconnect_grace_s"] = 1.0  # the coordinator of that run is gone: nobody listens on its port
    cfg_file.write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "tinytwin.emulate.device", str(cfg_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 3, res.stderr
    assert "no coordinator" in res.stderr and time.perf_counter() - t0 < 15
