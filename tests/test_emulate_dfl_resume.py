"""A decentralized emulation whose coordinator is SIGKILLed resumes from its results database:
the device processes keep their models, call the coordinator's address again, roll back to the
last committed round and finish the run (issue #5); none is left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from dfl_util import run_engine, spec_dict
from emulate_util import (
    assert_no_orphans,
    db_rows,
    kill_mid_run,
    kill_pids,
    peer_pids,
    pid_alive,
    recorded_peer_pids,
    resume_after_kill,
    start_cli,
    stored_tables,
    wait_for_round,
)
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.spec.load import validate_spec

ROUNDS = 8


def _raw() -> dict:
    group = {"profile": "esp32-s3", "count": 6, "link": "ble", "link_overrides": {"loss": 0.0, "header_bytes": 0}}
    return spec_dict(
        name="dflres",
        rounds=ROUNDS,
        algorithm__name="decfedavg",
        algorithm__decfedavg={"mixing_steps": 2},
        fleet={"groups": [group]},
    )


def _pids(run_dir: Path) -> list[int]:
    return peer_pids(run_dir, "devices")


def test_killed_decentralized_coordinator_resumes_and_peers_reconnect(tmp_path: Path) -> None:
    raw = _raw()
    spec_file = tmp_path / "dflres.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    coordinator = start_cli(
        "emulate", str(spec_file), "--time-scale", "1", "--out", str(tmp_path / "runs"), "--quiet", "--no-report"
    )
    run_dir = None
    try:
        run_dir = wait_for_round(coordinator, tmp_path / "runs", "dflres-emulate-*", 2, 90)
        assert run_dir is not None, "the emulation did not reach round 2 in 90 s"
        killed = kill_mid_run(coordinator, run_dir, 2, ROUNDS)
        done = killed.done
        assert all(pid_alive(p) for p in _pids(run_dir)), "the peers outlive their coordinator (they call it again)"

        after = resume_after_kill(run_dir, killed, ROUNDS, timeout=240)
        info, _, _, events, rm, _ = stored_tables(run_dir)
        assert info.status == "complete" and info.rounds_done == ROUNDS
        kinds = [e["kind"] for e in events]
        assert kinds.count("resume") == 1 and kinds.count("devices_resumed") == 1 and "lost" not in kinds
        assert all(r[5] == 6 for r in after)  # completed: every device, every round
        e = info.summary["emulate"]
        assert e["reconnects"] == 6 and e["devices_lost"] == {}

        # the simulator's models (the peers roll back to the last committed round and replay the rest)
        _, sim_state, _, _ = run_engine(tmp_path, raw, name="sim")
        models = np.load(run_dir / "emulate" / "final_models.npz")
        worst = max(float(np.abs(models[f"d{d}"] - sim_state.params[d].numpy()).max()) for d in range(6))
        # same final mean accuracy as an uninterrupted emulation
        _, straight = start_emulation(
            validate_spec(raw),
            yaml.safe_dump(raw),
            tmp_path / "straight",
            None,
            EmulateOptions(time_scale=0.0),
            report=False,
        )
        print(
            f"killed after round {done}; resumed mean accuracy {rm[-1]['acc_mean']:.4f}, uninterrupted "
            f"{straight['final_accuracy']:.4f}; largest difference from the simulator's models {worst:.2e}"
        )
        assert abs(rm[-1]["acc_mean"] - straight["final_accuracy"]) <= 0.01
        assert worst <= 1e-5, worst

        # no orphans: the peers and the killed coordinator's fork server are gone
        assert_no_orphans(_pids(run_dir))
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        kill_pids(recorded_peer_pids(run_dir, "devices"))


def test_peers_give_up_after_the_grace_period(tmp_path: Path) -> None:
    """Nobody resumes the killed coordinator: every peer calls its address for reconnect_grace_s,
    then exits (status 3), and the old fork server with them — no orphans."""
    raw = _raw()
    code = (
        "import sys, yaml; from pathlib import Path; from tinytwin.spec.load import validate_spec; "
        "from tinytwin.emulate.dfl_coordinator import DflOptions; "
        "from tinytwin.emulate.coordinator import start_emulation; raw = yaml.safe_load(sys.stdin); "
        f"start_emulation(validate_spec(raw), yaml.safe_dump(raw), Path({str(tmp_path)!r}), None, "
        "DflOptions(time_scale=1.0, reconnect_grace_s=2.0), run_dir=Path(sys.argv[1]), report=False)"
    )
    run_dir = tmp_path / "run"
    coordinator = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    coordinator.stdin.write(yaml.safe_dump(raw))
    coordinator.stdin.close()
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not db_rows(run_dir, "SELECT round FROM rounds WHERE round >= 1"):
            assert coordinator.poll() is None, coordinator.stderr.read() if coordinator.stderr else ""
            time.sleep(0.01)
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
        pids = _pids(run_dir)
        assert any(pid_alive(p) for p in pids)
        t0 = time.time()
        while any(pid_alive(p) for p in pids) and time.time() - t0 < 60:
            time.sleep(0.1)
        assert [p for p in pids if pid_alive(p)] == []
        logs = " ".join((run_dir / "emulate" / "logs" / f"d{d}.log").read_text() for d in range(6))
        assert logs.count("no coordinator within 2.0 s") == 6
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        kill_pids(recorded_peer_pids(run_dir, "devices"))
