"""The orchestrator in the emulation twin: a leave is a SIGKILLed device process that its local
aggregator reports, a join is a device process started mid-run that registers at the global
coordinator; the orchestrator reconfigures on what it heard, moves devices between aggregators,
and gives the simulator's configurations, costs and models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli, write_spec
from dfl_util import run_engine, spec_dict
from emulate_util import stored_tables
from tinytwin.emulate.coordinator import start_emulation
from tinytwin.emulate.hier_coordinator import HierOptions
from tinytwin.spec.load import validate_spec
from tinytwin.store import dfl as dfl_store

# devices 0-3 are cheap to LA 0, 4-7 to LA 1; device 8 is new, very dear at LA 0, cheap at LA 1
COSTS = {"client_costs": [[1, 9]] * 4 + [[9, 1]] * 4 + [[30, 1]], "aggregator_costs": [5, 7]}


def _raw(orchestration: dict, failures: dict, rounds: int = 7, costs: dict = COSTS) -> dict:
    return spec_dict(
        rounds=rounds,
        fleet={"groups": [{"profile": "esp32-s3", "count": 9, "link": "wifi"}]},
        algorithm={
            "name": "hierarchical",
            "local_epochs": 1,
            "batch_size": 8,
            "lr": 0.1,
            "hierarchical": {
                "num_clusters": 2,
                "local_rounds": 2,
                "assignment": "min_comm_cost",
                **costs,
                "orchestration": orchestration,
            },
        },
        failures=failures,
    )


def _both(tmp_path: Path, raw: dict):
    sim, st, store, run_id = run_engine(tmp_path, raw, name="sim")
    run_dir, summary = start_emulation(
        validate_spec(raw), yaml.safe_dump(raw), tmp_path / "emu", None, HierOptions(time_scale=0.0), report=False
    )
    return (sim, st, store, run_id), (run_dir, summary)


def _configurations(events: list[dict]) -> list[tuple[int, dict]]:
    return [(e["round"], json.loads(e["detail"])) for e in events if e["kind"] == "reconfigure"]


def test_real_joins_and_leaves_give_the_simulators_configurations_costs_and_model(tmp_path: Path) -> None:
    # device 8 joins at round 3; device 2 leaves at round 4 and rejoins at round 6
    failures = {
        "join": [{"device": 8, "round": 3}, {"device": 2, "round": 6}],
        "leave": [{"device": 2, "round": 4}],
    }
    (sim, st, store, sim_id), (run_dir, summary) = _both(tmp_path, _raw({"budget": 1e9}, failures))
    info, rounds, dev_rows, events, _rm, _dm, ledger = stored_tables(run_dir, ledger=True)
    assert info.status == "complete" and len(rounds) == 7
    sim_events = store.events(sim_id)
    emu_conf, sim_conf = _configurations(events), _configurations(sim_events)
    assert emu_conf == sim_conf and [r for r, _ in emu_conf] == [1, 3, 4, 6]  # 1: device 8 starts away
    # the join takes one of LA 1's four slots, so a device of 4-7 (the solver's tie: 7) moves to LA 0,
    # handed over by its old LA
    assert emu_conf[1][1]["old"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert emu_conf[1][1]["new"] == [[0, 1, 2, 3, 7], [4, 5, 6, 8]]
    la1_log = (run_dir / "emulate" / "logs" / "la1.log").read_text()
    assert "device 7 handed over" in la1_log
    assert "redirected" in (run_dir / "emulate" / "logs" / "d7.log").read_text()
    assert ledger == dfl_store.ledger(store, sim_id)  # round costs and the change costs
    assert summary["cost_total"] == pytest.approx(st.cost_spent)
    # every device took part exactly where the simulator's did, adopted by its new aggregator
    assert [(d["round"], d["device"], d["status"]) for d in dev_rows] == [
        (d["round"], d["device"], d["status"]) for d in store.device_rounds(sim_id)
    ]
    in_round = {r: {d["device"] for d in dev_rows if d["round"] == r} for r in range(1, 8)}
    assert 8 not in in_round[2] and 8 in in_round[3]
    assert 2 in in_round[3] and 2 not in in_round[4] | in_round[5] and 2 in in_round[6]
    models = np.load(run_dir / "emulate" / "final_models.npz")
    worst = float(np.abs(models["global"] - st.global_params.numpy()).max())
    assert worst <= 1e-4, worst
    # the orchestrator heard each event over the wire, and the figures are in the summary
    kinds = {(e["round"], e["device"], e["kind"]) for e in events}
    assert {(3, 8, "join_detected"), (4, 2, "leave_detected"), (6, 2, "join_detected")} <= kinds
    o = summary["emulate"]["orchestration"]
    assert o["join_detect_ms"]["n"] == 2 and o["leave_detect_ms"]["n"] == 1
    assert 0 < o["leave_detect_ms"]["max"] < 5000 and 0 < o["join_detect_ms"]["max"] < 30000
    assert o["coordinator_rss_kb"] > 0 and o["orchestrator_cpu_s"] >= 0
    assert summary["emulate"]["process_starts"]["devices"] == 10  # 8 at the start, the joiner, the rejoin


def test_a_cost_change_and_the_budget_stop_as_in_the_simulator(tmp_path: Path) -> None:
    # device 8 joins at round 2; device 0's link to LA 0 gets dear at round 3: it is moved to LA 1
    failures = {"join": [{"device": 8, "round": 2}]}
    change = [{"round": 3, "device": 0, "client_costs": [20, 1]}]
    raw = _raw({"budget": 1e9, "cost_changes": change}, failures)  # the budget is set below
    sim, st, store, _ = run_engine(tmp_path, raw, name="probe")
    per_round = st.cost_spent / st.round
    raw = _raw({"budget": 3.5 * per_round, "cost_changes": change}, failures)
    (sim, st, store, sim_id), (run_dir, summary) = _both(tmp_path, raw)
    assert st.orch.stopped_round is not None and 3 <= st.orch.stopped_round < 7
    info, rounds, _, events, *_, ledger = stored_tables(run_dir, ledger=True)
    assert len(rounds) == st.orch.stopped_round
    assert ledger == dfl_store.ledger(store, sim_id)
    assert _configurations(events) == _configurations(store.events(sim_id))
    assert (3, 0, "cost_change") in {(e["round"], e["device"], e["kind"]) for e in events}
    assert "redirected" in (run_dir / "emulate" / "logs" / "d0.log").read_text()
    assert summary["orchestration"]["stopped_round"] == st.orch.stopped_round


def test_rva_decides_as_in_the_simulator_and_a_revert_moves_the_processes_back(tmp_path: Path) -> None:
    # device 8 joins at round 3, dear at both LAs: RVA validates the costlier configuration over
    # rounds 3-4 and decides; a revert drops the joiner and hands device 7 back to LA 1
    costs = {"client_costs": [[1, 9]] * 4 + [[9, 1]] * 4 + [[40, 30]], "aggregator_costs": [5, 7]}
    raw = _raw({"budget": 1e9, "rva": {"window": 2}}, {"join": [{"device": 8, "round": 3}]}, costs=costs)
    (sim, st, store, sim_id), (run_dir, summary) = _both(tmp_path, raw)
    info, rounds, dev_rows, events, *_ = stored_tables(run_dir)
    rva = [(e["round"], e["kind"]) for e in events if e["kind"].startswith("rva_")]
    assert rva == [(e["round"], e["kind"]) for e in store.events(sim_id) if e["kind"].startswith("rva_")]
    assert (3, "rva_validating") in rva and rva[-1][0] == 4
    decision = json.loads([e for e in events if e["kind"] in ("rva_keep", "rva_revert")][0]["detail"])
    assert decision["f_new"] == pytest.approx(st.orch.decisions[0]["f_new"], abs=1e-4)
    assert [(d["round"], d["device"], d["status"]) for d in dev_rows] == [
        (d["round"], d["device"], d["status"]) for d in store.device_rounds(sim_id)
    ]
    if decision["decision"] == "revert":  # device 7 goes back to LA 1, handed over by LA 0
        assert "device 7 handed over" in (run_dir / "emulate" / "logs" / "la0.log").read_text()
    in_round_5 = {d["device"] for d in dev_rows if d["round"] == 5}
    assert (8 in in_round_5) == (decision["decision"] == "keep")
    models = np.load(run_dir / "emulate" / "final_models.npz")
    assert float(np.abs(models["global"] - st.global_params.numpy()).max()) <= 1e-4


def test_orchestrated_emulation_refuses_permanent_failures_in_one_line(tmp_path: Path) -> None:
    raw = _raw({"budget": 1e9}, {"permanent": [{"device": 1, "round": 2}]})
    spec = write_spec(tmp_path / "o.yaml", yaml.safe_dump(raw))
    r = run_cli("emulate", str(spec), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and "failures.permanent" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("command", "accepted"),
    [
        ({"cmd": "redirect", "port": 40000}, True),
        ({"cmd": "redirect", "devices": {"3": 40000}}, True),
        ({"cmd": "redirect", "port": 0}, False),
        ({"cmd": "redirect", "port": "40000"}, False),
        ({"cmd": "redirect", "devices": {"x": 40000}}, False),
        ({"cmd": "redirect"}, False),
    ],
)
def test_a_redirect_names_a_valid_port_or_is_refused(command: dict, accepted: bool) -> None:
    from tinytwin.emulate.device import DeviceRuntime
    from tinytwin.emulate.frame_checks import Coordinator
    from tinytwin.emulate.wire_np import Rejected, derive_key
    from tinytwin.wire import frame as fm

    run_key = b"k" * 32
    coord = Coordinator(1, run_key, 4, [4], "float32")
    rt = DeviceRuntime(
        {"device": 0, "num_params": 4, "tensor_sizes": [4], "downlink_encoding": "float32"}, derive_key(run_key, 0)
    )
    frame = coord.make(fm.MsgType.CONTROL, 0, 1, "none", json.dumps(command).encode())
    if accepted:
        assert rt.accept(frame)[1] == command
    else:
        with pytest.raises(Rejected, match="bad redirect"):
            rt.accept(frame)


def test_firmware_devices_join_leave_and_move_under_the_orchestrator(tmp_path: Path) -> None:
    """The same orchestration with every device the C client on QEMU (``--twin firmware``): a board
    that joins registers at the GA, one that leaves is reported by its LA, the models are the
    simulator's to float32 rounding."""
    costs = {"client_costs": [[1, 9]] * 2 + [[9, 1]] * 2 + [[30, 1]], "aggregator_costs": [5, 7]}
    raw = _raw({"budget": 1e9}, {"join": [{"device": 4, "round": 2}], "leave": [{"device": 0, "round": 3}]}, 3, costs)
    raw["fleet"]["groups"][0]["count"] = 5
    _, st, store, sim_id = run_engine(tmp_path, raw, name="sim")
    run_dir, summary = start_emulation(
        validate_spec(raw),
        yaml.safe_dump(raw),
        tmp_path / "emu",
        None,
        HierOptions(time_scale=0.0, firmware_all=True),
        report=False,
    )
    _, _, dev_rows, events, *_ = stored_tables(run_dir)
    assert _configurations(events) == _configurations(store.events(sim_id))
    assert [(d["round"], d["device"], d["status"]) for d in dev_rows] == [
        (d["round"], d["device"], d["status"]) for d in store.device_rounds(sim_id)
    ]
    worst = float(np.abs(np.load(run_dir / "emulate" / "final_models.npz")["global"] - st.global_params.numpy()).max())
    assert worst <= 1e-5, worst
    assert summary["emulate"]["firmware"]["devices"] == 5
    kinds = {(e["round"], e["device"], e["kind"]) for e in events}
    assert {(2, 4, "join_detected"), (3, 0, "leave_detected")} <= kinds
