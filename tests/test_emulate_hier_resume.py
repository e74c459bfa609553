"""A hierarchical emulation whose global coordinator is SIGKILLed resumes from its results
database: the local aggregators keep their devices, call the coordinator's address again, are
adopted, and rounds after the last committed one are replayed (issue #5); none is left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from dfl_util import run_engine, spec_dict
from emulate_util import (
    assert_no_orphans,
    kill_mid_run,
    kill_pids,
    peer_pids,
    pid_alive,
    recorded_peer_pids,
    resume_after_kill,
    start_cli,
    stored_rows,
    wait_for_round,
)
from tinytwin.emulate.coordinator import start_emulation
from tinytwin.emulate.hier_coordinator import HierOptions
from tinytwin.spec.load import validate_spec

ROUNDS = 6
LAN = {"lan": {"base": "ethernet", "header_bytes": 0, "sources": {"header_bytes": "test: no per-packet header"}}}


def _raw(tmp_path: Path) -> dict:
    links = tmp_path / "links.yaml"
    links.write_text(yaml.safe_dump(LAN))
    group = {"profile": "esp32-s3", "count": 6, "link": "wifi", "link_overrides": {"loss": 0.0, "header_bytes": 0}}
    algorithm = {
        "name": "hierarchical",
        "batch_size": 8,
        "lr": 0.1,
        "hierarchical": {"aggregator_link": "lan", "num_clusters": 2, "local_rounds": 2},
    }
    return spec_dict(
        name="hierres", rounds=ROUNDS, fleet={"groups": [group], "links_file": str(links)}, algorithm=algorithm
    )


def _pids(run_dir: Path) -> list[int]:
    return peer_pids(run_dir, "aggregators", "devices")


def test_killed_hierarchical_coordinator_resumes_and_aggregators_reconnect(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    spec_file = tmp_path / "hierres.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    coordinator = start_cli(
        "emulate", str(spec_file), "--time-scale", "1", "--out", str(tmp_path / "runs"), "--quiet", "--no-report"
    )
    run_dir = None
    old_pids: list[int] = []
    try:
        run_dir = wait_for_round(coordinator, tmp_path / "runs", "hierres-emulate-*", 2, 60)
        assert run_dir is not None, "the emulation did not reach round 2 in 60 s"
        killed = kill_mid_run(coordinator, run_dir, 2, ROUNDS)
        done = killed.done
        old_pids = _pids(run_dir)
        assert all(pid_alive(p) for p in old_pids), "aggregators and devices outlive their coordinator"

        after = resume_after_kill(run_dir, killed, ROUNDS, timeout=120)
        info, _, _, events = stored_rows(run_dir, with_info=True)
        assert info.status == "complete" and info.rounds_done == ROUNDS
        kinds = [e["kind"] for e in events]
        assert kinds.count("resume") == 1 and kinds.count("devices_resumed") == 1
        la_back = [e for e in events if e["kind"] == "reconnect" and e["device"] is None]
        dev_back = [e for e in events if e["kind"] == "reconnect" and e["device"] is not None]
        assert len(la_back) == 2 and len(dev_back) == 6, [e["detail"] for e in events if e["kind"] == "reconnect"]
        assert "restart" not in kinds and "cluster_failed" not in kinds
        assert all(r[5] == 6 for r in after)  # completed: every device, every round
        e = info.summary["emulate"]
        assert e["reconnects"] == 2
        assert e["process_starts"] == {"devices": 6, "aggregators": 2}  # adopted, none started again

        # the simulator's global model, and an uninterrupted emulation's accuracy
        _, sim_state, _, _ = run_engine(tmp_path, raw, name="sim")
        models = np.load(run_dir / "emulate" / "final_models.npz")
        worst = float(np.abs(models["global"] - sim_state.global_params.numpy()).max())
        _, straight = start_emulation(
            validate_spec(raw),
            yaml.safe_dump(raw),
            tmp_path / "straight",
            None,
            HierOptions(time_scale=0.0),
            report=False,
        )
        print(
            f"killed after round {done}; resumed accuracy {info.summary['final_accuracy']:.4f}, uninterrupted "
            f"{straight['final_accuracy']:.4f}; largest difference from the simulator's global model {worst:.2e}"
        )
        assert abs(info.summary["final_accuracy"] - straight["final_accuracy"]) <= 0.01
        assert worst <= 1e-4, worst

        # no orphans: the adopted aggregators and devices and the killed coordinator's fork server are gone
        assert_no_orphans(old_pids + _pids(run_dir))
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        kill_pids(old_pids + recorded_peer_pids(run_dir, "aggregators", "devices"))
