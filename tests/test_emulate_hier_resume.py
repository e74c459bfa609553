"""A hierarchical emulation whose global coordinator is SIGKILLed resumes from its results
database: the local aggregators keep their devices, call the coordinator's address again, are
adopted, and rounds after the last committed one are replayed (issue #5); none is left behind."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from conftest import run_cli
from dfl_util import run_engine, spec_dict
from tinytwin.emulate.coordinator import start_emulation
from tinytwin.emulate.dfl_coordinator import PEERS_FILE
from tinytwin.emulate.hier_coordinator import HierOptions
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import RunStore

ROUNDS = 6
LAN = {"lan": {"base": "ethernet", "header_bytes": 0, "sources": {"header_bytes": "test: no per-packet header"}}}


def _raw(tmp_path: Path) -> dict:
    links = tmp_path / "links.yaml"
    links.write_text(yaml.safe_dump(LAN))
    group = {"profile": "esp32-s3", "count": 6, "link": "wifi", "link_overrides": {"loss": 0.0, "header_bytes": 0}}
    algorithm = {"name": "hierarchical", "batch_size": 8, "lr": 0.1,
                 "hierarchical": {"aggregator_link": "lan", "num_clusters": 2, "local_rounds": 2}}
    return spec_dict(name="hierres", rounds=ROUNDS, fleet={"groups": [group], "links_file": str(links)},
                     algorithm=algorithm)


def _rows(run_dir: Path, sql: str) -> list[tuple]:
    if not (run_dir / "results.db").is_file():
        return []
    con = sqlite3.connect(f"file:{run_dir / 'results.db'}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:   # not created yet
        return []
    finally:
        con.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _pids(run_dir: Path) -> list[int]:
    saved = json.loads((run_dir / "emulate" / PEERS_FILE).read_text())
    return [int(saved["forkserver"]), *map(int, saved["aggregators"].values()), *map(int, saved["devices"].values())]


def test_killed_hierarchical_coordinator_resumes_and_aggregators_reconnect(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    spec_file = tmp_path / "hierres.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "tinytwin.cli", "emulate", str(spec_file), "--time-scale", "1", "--out",
           str(tmp_path / "runs"), "--quiet", "--no-report"]
    coordinator = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = None
    old_pids: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            found = list((tmp_path / "runs").glob("hierres-emulate-*"))
            if found and _rows(found[0], "SELECT round FROM rounds WHERE round >= 2"):
                run_dir = found[0]
                break
            assert coordinator.poll() is None, coordinator.stderr.read() if coordinator.stderr else ""
            time.sleep(0.01)
        assert run_dir is not None, "the emulation did not reach round 2 in 60 s"
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
        before = _rows(run_dir, "SELECT * FROM rounds ORDER BY round")
        before_dev = _rows(run_dir, "SELECT * FROM device_rounds ORDER BY round, device")
        done = len(before)
        assert 2 <= done < ROUNDS, f"killed after {done} rounds; the test needs a kill mid-run"
        assert _rows(run_dir, "SELECT status FROM runs")[0][0] == "running"
        old_pids = _pids(run_dir)
        assert all(_alive(p) for p in old_pids), "aggregators and devices outlive their coordinator"

        res = run_cli("emulate", str(run_dir / "spec.yaml"), "--resume", str(run_dir), "--quiet", "--no-report",
                      timeout=120)
        assert res.returncode == 0, res.stderr
        after = _rows(run_dir, "SELECT * FROM rounds ORDER BY round")
        assert [r[1] for r in after] == list(range(1, ROUNDS + 1))
        assert after[:done] == before                               # the committed rounds are untouched
        assert [r for r in _rows(run_dir, "SELECT * FROM device_rounds ORDER BY round, device")
                if r[1] <= done] == before_dev
        store = RunStore(run_dir / "results.db")
        try:
            info = store.run_info()
            events = store.events(info.run_id)
        finally:
            store.close()
        assert info.status == "complete" and info.rounds_done == ROUNDS
        kinds = [e["kind"] for e in events]
        assert kinds.count("resume") == 1 and kinds.count("devices_resumed") == 1
        la_back = [e for e in events if e["kind"] == "reconnect" and e["device"] is None]
        dev_back = [e for e in events if e["kind"] == "reconnect" and e["device"] is not None]
        assert len(la_back) == 2 and len(dev_back) == 6, [e["detail"] for e in events if e["kind"] == "reconnect"]
        assert "restart" not in kinds and "cluster_failed" not in kinds
        assert all(r[5] == 6 for r in after)                        # completed: every device, every round
        e = info.summary["emulate"]
        assert e["reconnects"] == 2
        assert e["process_starts"] == {"devices": 6, "aggregators": 2}   # adopted, none started again

        # the simulator's global model, and an uninterrupted emulation's accuracy
        _, sim_state, _, _ = run_engine(tmp_path, raw, name="sim")
        models = np.load(run_dir / "emulate" / "final_models.npz")
        worst = float(np.abs(models["global"] - sim_state.global_params.numpy()).max())
        _, straight = start_emulation(validate_spec(raw), yaml.safe_dump(raw), tmp_path / "straight", None,
                                      HierOptions(time_scale=0.0), report=False)
        print(f"killed after round {done}; resumed accuracy {info.summary['final_accuracy']:.4f}, uninterrupted "
              f"{straight['final_accuracy']:.4f}; largest difference from the simulator's global model {worst:.2e}")
        assert abs(info.summary["final_accuracy"] - straight["final_accuracy"]) <= 0.01
        assert worst <= 1e-4, worst

        # no orphans: the adopted aggregators and devices and the killed coordinator's fork server are gone
        time.sleep(0.5)
        assert [p for p in old_pids + _pids(run_dir) if _alive(p)] == []
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        for p in old_pids + (_pids(run_dir) if run_dir is not None and (run_dir / "emulate" / PEERS_FILE).is_file()
                             else []):
            if _alive(p):
                subprocess.run(["kill", "-9", str(p)], check=False)
