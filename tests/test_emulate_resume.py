"""A coordinator killed mid-run (SIGKILL of `tinytwin emulate`) resumes from its results
database; the device processes it left running reconnect, and none is left behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns_util import require_netns_privileges

from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.emulate.netns import remove_leftovers
from tinytwin.emulate.rundir import PIDS_FILE, AdoptedProcess, kill_recorded_devices
from tinytwin.spec.load import load_spec
from tinytwin.store.db import RunStore

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "examples" / "quickstart.yaml"
SETS = ["fleet.groups.0.count=4", "rounds=8", "fleet.groups.0.link=ble"]


def _db_rows(run_dir: Path, sql: str) -> list[tuple]:
    if not (run_dir / "results.db").is_file():   # the run folder exists before its database
        return []
    con = sqlite3.connect(f"file:{run_dir / 'results.db'}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()


def _device_procs(run_dir: Path) -> dict[int, AdoptedProcess]:
    edir = run_dir / "emulate"
    pids = json.loads((edir / PIDS_FILE).read_text())
    return {int(d): AdoptedProcess(int(p), edir / "devices" / f"d{d}.json") for d, p in pids.items()}


@pytest.mark.parametrize("netns", [False, True], ids=["loopback", "netns"])
def test_killed_coordinator_resumes_and_devices_reconnect(tmp_path: Path, netns: bool) -> None:
    if netns:
        require_netns_privileges()
    cmd = [sys.executable, "-m", "tinytwin.cli", "emulate", str(QUICK), *sum((["--set", s] for s in SETS), []),
           "--time-scale", "0.2", "--out", str(tmp_path), "--quiet", "--no-report"] + (["--netns"] if netns else [])
    coordinator = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            found = list(tmp_path.glob("quickstart-emulate-*"))
            if found and _db_rows(found[0], "SELECT round FROM rounds WHERE round >= 3"):
                run_dir = found[0]
                break
            assert coordinator.poll() is None, coordinator.stderr.read() if coordinator.stderr else ""
            time.sleep(0.02)
        assert run_dir is not None, "the emulation did not reach round 3 in 60 s"
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
        before = _db_rows(run_dir, "SELECT * FROM rounds ORDER BY round")
        done = len(before)
        assert 3 <= done < 8, f"killed after {done} rounds; the test needs a kill mid-run"
        status = _db_rows(run_dir, "SELECT status FROM runs")[0][0]
        assert status == "running"  # SIGKILL: no chance to mark it
        alive = [d for d, p in _device_procs(run_dir).items() if p.poll() is None]
        assert len(alive) == 4, "the device processes outlive their coordinator (they keep calling it)"

        res = run_cli("emulate", str(run_dir / "spec.yaml"), "--resume", str(run_dir), "--quiet", "--no-report",
                      timeout=120)
        assert res.returncode == 0, res.stderr
        after = _db_rows(run_dir, "SELECT * FROM rounds ORDER BY round")
        assert [r[1] for r in after] == list(range(1, 9))
        assert after[:done] == before  # the committed rounds are untouched
        store = RunStore(run_dir / "results.db")
        try:
            info = store.run_info()
            events = store.events(info.run_id)
        finally:
            store.close()
        assert info.status == "complete" and info.rounds_done == 8
        kinds = [e["kind"] for e in events]
        assert kinds.count("resume") == 1
        reconnected = sorted(e["device"] for e in events if e["kind"] == "reconnect")
        assert reconnected == sorted(alive), events
        assert info.summary["emulate"]["process_starts"] == 0  # nobody had to be started again
        assert "restart" not in kinds

        # Same final accuracy as an uninterrupted run (within 1 percentage point).
        spec, spec_yaml = load_spec(QUICK, SETS)
        _, straight = start_emulation(spec, spec_yaml, tmp_path / "straight", ROOT / "examples",
                                      EmulateOptions(time_scale=0.0), report=False)
        print(f"killed after round {done}; {len(reconnected)} devices reconnected; final accuracy resumed "
              f"{info.summary['final_accuracy']:.4f}, uninterrupted {straight['final_accuracy']:.4f}")
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
    run_dir, _ = start_emulation(spec, spec_yaml, tmp_path, ROOT / "examples", EmulateOptions(time_scale=0.0),
                                 report=False)
    cfg_file = run_dir / "emulate" / "devices" / "d0.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["reconnect_grace_s"] = 1.0  # the coordinator of that run is gone: nobody listens on its port
    cfg_file.write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "tinytwin.emulate.device", str(cfg_file)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 3, res.stderr
    assert "no coordinator" in res.stderr and time.perf_counter() - t0 < 15
