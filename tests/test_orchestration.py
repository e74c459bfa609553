"""The adaptive orchestrator of hierarchical runs: reconfiguration on joins and leaves with its
change cost, the budget stop, and RVA's keep-or-revert decision (reference/algorithms.md §5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dfl_util import resume_engine, run_engine, spec_dict
from tinytwin.algorithms.rva import (
    LogFit,
    fit_log,
    should_validate,
    should_validate_for_target,
    target_decision,
    validation_decision,
)
from tinytwin.engines.experiment import prepare
from tinytwin.errors import SpecError
from tinytwin.spec.load import validate_spec
from tinytwin.store.dfl import ledger

# devices 0-2 are cheap to LA 0, 3-5 cheap to LA 1; LA links cost 5 and 7 per MB
COSTS = {"client_costs": [[1, 9]] * 3 + [[9, 1]] * 3, "aggregator_costs": [5, 7]}


def _raw(orchestration: dict, failures: dict, rounds: int = 10, count: int = 6, costs: dict = COSTS) -> dict:
    hier = {"num_clusters": 2, "local_rounds": 1, "assignment": "min_comm_cost", **costs}
    return spec_dict(
        rounds=rounds,
        fleet={"groups": [{"profile": "esp32-s3", "count": count, "link": "wifi"}]},
        algorithm={
            "name": "hierarchical",
            "local_epochs": 1,
            "batch_size": 8,
            "lr": 0.1,
            "hierarchical": {**hier, "orchestration": orchestration},
        },
        failures=failures,
    )


def _model_mb(raw: dict) -> float:
    return prepare(validate_spec(raw)).uplink_bytes() / 1e6


def test_fit_log_and_decisions_equal_a_hand_computation():
    rounds, acc = [1, 2, 3, 4], [0.50, 0.62, 0.68, 0.73]
    f = fit_log(rounds, acc)
    x = np.log(rounds)
    b = ((x - x.mean()) * (np.array(acc) - np.mean(acc))).sum() / ((x - x.mean()) ** 2).sum()
    assert f.b == pytest.approx(b) and f.a == pytest.approx(np.mean(acc) - b * x.mean())
    assert f(10) == pytest.approx(f.a + f.b * math.log(10))
    # the new configuration costs more per round: validated only when it affords fewer rounds
    assert should_validate(100.0, 10.0, 12.0, 3.0)  # 8 rounds < 10
    assert not should_validate(100.0, 10.0, 9.0, 0.0)  # 11 rounds >= 10
    # must revert: the new curve is flat and lower; old affords (100-4)//10 = 9 rounds, new 100//12 = 8
    old, flat = fit_log([1, 2, 3, 4], [0.5, 0.6, 0.66, 0.7]), fit_log([5, 6], [0.6, 0.6])
    d = validation_decision(old, flat, 6, 100.0, 4.0, 10.0, 12.0)
    assert (d.round_old, d.round_new) == (15, 14)
    assert d.predicted_old == pytest.approx(old.a + old.b * math.log(15)) and d.predicted_new == pytest.approx(0.6)
    assert d.revert
    # must keep: the new configuration learns faster than the old curve predicts
    fast = fit_log([5, 6], [0.72, 0.80])
    keep = validation_decision(old, fast, 6, 100.0, 4.0, 10.0, 12.0)
    assert keep.predicted_new == pytest.approx(fast.a + fast.b * math.log(14))
    assert keep.predicted_new > keep.predicted_old and not keep.revert


def test_leave_and_rejoin_reconfigure_charge_the_change_cost_and_the_budget_stops(tmp_path):
    failures = {"leave": [{"device": 5, "round": 3}], "join": [{"device": 5, "round": 5}]}
    m = _model_mb(_raw({}, failures))
    # hand calculation: C_round = (5 + 7)·M + Σ c(client, parent)·M
    #   rounds 1-2: 6 clients at cost 1 -> 18 M; rounds 3-4 (device 5 away): 17 M
    #   round 5: device 5 rejoins LA 1, C_change = 1/2 · M; round 6: 18 M
    spent_after = np.cumsum([18, 18, 17, 17, 18.5, 18, 18, 18]) * m
    budget = 100 * m  # spent 88.5 M after round 5, 106.5 M after round 6: stop after round 6
    sim, st, store, run_id = run_engine(tmp_path, _raw({"budget": budget}, failures))
    assert st.round == 6 and st.orch.stopped_round == 6
    assert st.cost_spent == pytest.approx(spent_after[5])
    rows = ledger(store, run_id)
    changes = [(r["round"], r["cost"]) for r in rows if r["level"] == "change"]
    assert changes == [(5, pytest.approx(0.5 * m))]  # a charge at the rejoin, none at the leave
    events = {(e["round"], e["kind"]) for e in store.events(run_id)}
    assert {(3, "reconfigure"), (5, "reconfigure"), (6, "budget_spent")} <= events
    assert [r["round"] for r in store.rounds(run_id)] == list(range(1, 7))
    summary = sim.summary(st, 0.0)
    assert summary["orchestration"]["stopped_round"] == 6 and summary["clusters"] == [[0, 1, 2], [3, 4, 5]]


def test_rva_validates_a_costlier_configuration_and_decides_from_the_fitted_curves(tmp_path):
    # device 6 is new: offline until round 4, expensive to both LAs (a costlier configuration)
    costs = {"client_costs": [[1, 9]] * 3 + [[9, 1]] * 3 + [[30, 30]], "aggregator_costs": [5, 7]}
    failures = {"join": [{"device": 6, "round": 4}]}
    raw = _raw(
        {"budget": 2000 * _model_mb(_raw({}, failures, count=7, costs=costs)), "rva": {"window": 3}},
        failures,
        rounds=9,
        count=7,
        costs=costs,
    )
    sim, st, store, run_id = run_engine(tmp_path, raw)
    events = {e["kind"]: e for e in store.events(run_id) if e["kind"].startswith("rva_")}
    assert events["rva_validating"]["round"] == 4
    (decision,) = st.orch.decisions
    assert decision["round"] == 6  # the window: rounds 4, 5, 6
    accs = [(r["round"], r["test_accuracy"]) for r in store.rounds(run_id)]
    f_old = fit_log([r for r, _ in accs[:3]], [a for _, a in accs[:3]])
    f_new = fit_log([r for r, _ in accs[3:6]], [a for _, a in accs[3:6]])
    assert decision["f_old"] == pytest.approx([f_old.a, f_old.b]) and decision["f_new"] == pytest.approx(
        [f_new.a, f_new.b]
    )
    assert decision["decision"] in ("keep", "revert")
    assert events[f"rva_{decision['decision']}"]["round"] == 6
    in_round_7 = {d["device"] for d in store.device_rounds(run_id) if d["round"] == 7}
    assert (6 in in_round_7) == (decision["decision"] == "keep")  # a revert drops the joiner again
    detail = json.loads(events[f"rva_{decision['decision']}"]["detail"])
    assert detail["predicted_old"] == pytest.approx(decision["predicted_old"])


@pytest.mark.parametrize(
    ("orchestration", "message"),
    [
        ({"rva": {"window": 0}}, "window"),
        ({"budget": 0}, "budget"),
        ({"budget": -5}, "budget"),
        ({"strategy": "fastest"}, "strategy"),
        ({"rva": {"window": 3}}, "set orchestration.budget or orchestration.target_accuracy"),
        ({"target_accuracy": 1.5}, "target_accuracy"),
        ({"energy_budget_j": 0}, "energy_budget_j"),
    ],
)
def test_bad_orchestration_is_refused(orchestration, message):
    with pytest.raises(SpecError, match=message):
        validate_spec(_raw(orchestration, {}))


def test_a_resumed_orchestrated_run_makes_the_same_decisions(tmp_path):
    costs = {"client_costs": [[1, 9]] * 3 + [[9, 1]] * 3 + [[30, 30]], "aggregator_costs": [5, 7]}
    failures = {"join": [{"device": 6, "round": 3}]}
    raw = _raw(
        {"budget": 150 * _model_mb(_raw({}, failures, count=7, costs=costs)), "rva": {"window": 2}},
        failures,
        rounds=8,
        count=7,
        costs=costs,
    )
    _, whole, _, _ = run_engine(tmp_path, raw, name="whole")
    run_engine(tmp_path, raw, name="killed", stop_after=3)  # killed during the validation window
    _, resumed, _, _ = resume_engine(tmp_path, raw, "killed")
    assert whole.orch.decisions and whole.orch.stopped_round == 5  # measured: RVA decided at 4, budget spent at 5
    assert resumed.round == whole.round and resumed.orch.stopped_round == whole.orch.stopped_round
    assert resumed.orch.decisions == whole.orch.decisions and resumed.cost_spent == whole.cost_spent
    assert np.array_equal(resumed.orch.assign, whole.orch.assign)
    assert np.array_equal(resumed.global_params.numpy(), whole.global_params.numpy())


def test_target_mode_decisions_equal_a_hand_computation():
    old = LogFit(0.5, 0.1)  # reaches 0.8 at r = e^3 ≈ 20.1
    assert old.round_reaching(0.8) == pytest.approx(math.exp(3.0))
    assert LogFit(0.5, 0.0).round_reaching(0.8) == math.inf
    # at t = 6 the old configuration needs 14.1 more rounds at cost 10: 141 - 5 buys 11.3 rounds at 12
    assert should_validate_for_target(old, 6, 0.8, 10.0, 12.0, 5.0)
    assert not should_validate_for_target(old, 6, 0.8, 10.0, 9.0, 5.0)
    fast = LogFit(0.45, 0.15)  # reaches 0.8 at e^(0.35/0.15) ≈ 10.3
    d = target_decision(old, fast, 6, 0.8, 5.0, 10.0, 12.0)
    assert d.predicted_old == pytest.approx(5.0 + (math.exp(3.0) - 6) * 10.0)
    assert d.predicted_new == pytest.approx((math.exp(0.35 / 0.15) - 6) * 12.0)
    assert not d.revert  # the new configuration reaches the target for less
    assert target_decision(old, LogFit(0.5, 0.05), 6, 0.8, 5.0, 10.0, 12.0).revert


@pytest.mark.parametrize("objective", ["target_accuracy", "energy_budget_j"])
def test_target_and_energy_objectives_stop_at_the_round_the_records_give(tmp_path, objective):
    free = _raw({}, {}, rounds=8)
    _, _, store, run_id = run_engine(tmp_path, free, name="free")
    rounds = store.rounds(run_id)
    if objective == "target_accuracy":
        limit = rounds[4]["test_accuracy"]  # reached for the first time by round 5 at the latest
        expected = next(r["round"] for r in rounds if r["test_accuracy"] >= limit)
    else:
        energy = np.cumsum([r["energy_j"] for r in rounds])
        limit = float((energy[2] + energy[3]) / 2)  # spent during round 4
        expected = 4
    _, st, store2, run2 = run_engine(tmp_path, _raw({objective: limit}, {}, rounds=8), name="stop")
    assert st.orch.stopped_round == expected and len(store2.rounds(run2)) == expected
    kind = "target_reached" if objective == "target_accuracy" else "energy_spent"
    assert (expected, kind) in {(e["round"], e["kind"]) for e in store2.events(run2)}


def test_the_cost_models_size_factor_sets_m_for_costs_but_not_bytes(tmp_path):
    failures = {"leave": [{"device": 5, "round": 2}], "join": [{"device": 5, "round": 3}]}
    _, st, store, run_id = run_engine(tmp_path, _raw({"model_mb": 3.3}, failures, rounds=3))
    rows = ledger(store, run_id)
    assert [(r["round"], r["cost"]) for r in rows if r["level"] == "change"] == [(3, pytest.approx(0.5 * 3.3))]
    assert st.cost_spent == pytest.approx((18 + 17 + 18.5) * 3.3)
    m_bytes = _model_mb(_raw({}, failures)) * 1e6
    assert {r["bytes"] for r in rows if r["level"] == "client-la"} == {round(m_bytes)}  # real bytes, one model


def test_the_report_plots_the_budget_and_each_rva_decisions_curves(tmp_path):
    from tinytwin.engines.runner import start_run

    costs = {"client_costs": [[1, 9]] * 3 + [[9, 1]] * 3 + [[30, 30]], "aggregator_costs": [5, 7]}
    failures = {"join": [{"device": 6, "round": 4}]}
    m = _model_mb(_raw({}, failures, count=7, costs=costs))
    raw = _raw({"budget": 2000 * m, "rva": {"window": 3}}, failures, rounds=9, count=7, costs=costs)
    out = start_run(validate_spec(raw), json.dumps(raw), tmp_path, None)
    plots = out.run_dir / "plots"
    assert (plots / "budget.png").stat().st_size > 10_000 and (plots / "rva_1.png").stat().st_size > 10_000
    html = (out.run_dir / "report.html").read_text()
    assert "Spent communication cost against the budget" in html and "RVA&#x27;s decision" in html


def test_a_link_cost_change_reconfigures_and_its_costs_equal_a_hand_calculation(tmp_path):
    # round 3: device 0's link to LA 0 costs 20 instead of 1 (to LA 1: 1); minCommCost (3 slots
    # per LA) moves it to LA 1 and one of devices 3-5 to LA 0 (cost 9):
    #   rounds 1-2: (5 + 7) + 6·1 = 18 M; round 3: 12 + (1 + 1 + 9) + (1 + 1 + 1) = 26 M,
    #   plus C_change = (9 + 1)/2 · M = 5 M; round 4: 26 M
    change = {"round": 3, "device": 0, "client_costs": [20, 1]}
    m = _model_mb(_raw({}, {}))
    sim, st, store, run_id = run_engine(tmp_path, _raw({"budget": 1e9, "cost_changes": [change]}, {}, rounds=4))
    per_round = {}
    for row in ledger(store, run_id):
        per_round[row["round"]] = per_round.get(row["round"], 0.0) + row["cost"]
    assert [per_round[r] / m for r in (1, 2, 3, 4)] == pytest.approx([18, 18, 31, 26])
    kinds = [(e["round"], e["kind"]) for e in store.events(run_id)]
    assert (3, "cost_change") in kinds and (3, "reconfigure") in kinds
    assert 0 in sim.summary(st, 0.0)["clusters"][1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"round": 3, "device": 9, "client_costs": [1, 1]}, "device 9 is not in the fleet"),
        ({"round": 3, "device": 0, "client_costs": [1]}, "must list 2 costs"),
        ({"round": 30, "device": 0, "client_costs": [1, 1]}, "after the last round"),
    ],
)
def test_bad_cost_changes_are_refused(change, message):
    with pytest.raises(SpecError, match=message):
        validate_spec(_raw({"budget": 10.0, "cost_changes": [change]}, {}))
