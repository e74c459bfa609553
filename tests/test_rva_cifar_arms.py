"""The CIFAR-10 RVA reproduction copies two kinds of arm instead of rerunning them
(benchmarks/reproduce_rva_cifar.py); each copy must be the same computation as its source."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from conftest import load_benchmark
from dfl_util import run_engine, spec_dict
from tinytwin.data.partition_rules import per_device_partition
from tinytwin.store.dfl import ledger

BENCH = load_benchmark("reproduce_rva_cifar")


def _without_joiners(raw: dict, joiners: list[int]) -> dict:
    """``raw`` less everything that belongs to its joiners (their data rules, costs and leaves)."""
    raw = copy.deepcopy(raw)
    raw.pop("name")
    rules = raw["partition"]["devices"]
    per_device = [{k: v for k, v in r.items() if k != "count"} for r in rules for _ in range(r.get("count", 1))]
    raw["partition"]["devices"] = per_device[: -len(joiners)]
    hier = raw["algorithm"]["hierarchical"]
    hier["client_costs"] = hier["client_costs"][: -len(joiners)]
    raw["failures"]["leave"] = [e for e in raw["failures"]["leave"] if e["device"] not in joiners]
    return raw


@pytest.mark.parametrize(("experiment", "partner"), [(2, 1), (4, 3)])
def test_original_arms_of_partner_experiments_are_one_spec(experiment: int, partner: int) -> None:
    a, b = BENCH.arm_spec(experiment, "original", 1), BENCH.arm_spec(partner, "original", 1)
    joiners = [e["device"] for e in a["failures"]["leave"]]
    assert joiners == [e["device"] for e in b["failures"]["leave"]] == {2: [8, 9], 4: [8]}[experiment]
    assert _without_joiners(a, joiners) == _without_joiners(b, joiners)
    assert BENCH.SAME_ORIGINAL[experiment] == partner and BENCH.SAME_ORIGINAL[partner] == experiment


def test_per_device_partition_gives_the_first_devices_the_same_samples_whatever_the_last_hold() -> None:
    labels = np.repeat(np.arange(10), 400)
    base = [SimpleNamespace(classes=[c, c + 1], per_class=50, count=1) for c in range(0, 8, 2)]
    small = [*base, SimpleNamespace(classes=[0, 1], per_class=20, count=1)]
    large = [*base, SimpleNamespace(classes=[8, 9], per_class=300, count=1)]
    a, b = per_device_partition(labels, small, 5, seed=7), per_device_partition(labels, large, 5, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a[:4], b[:4]))
    assert not np.array_equal(a[4], b[4])


def _hier_original(joiner_rule: dict, joiner_costs: list[int]) -> dict:
    """Six clients and one joiner that never joins (it leaves at round 1), per-device data."""
    rules = [{"classes": [c, c + 1], "per_class": 20} for c in (0, 2, 4, 6, 8, 0)]
    return spec_dict(
        rounds=5,
        partition={"method": "per_device", "devices": [*rules, joiner_rule]},
        fleet={"groups": [{"profile": "esp32-s3", "count": 7, "link": "wifi"}]},
        algorithm={
            "name": "hierarchical",
            "local_epochs": 3,
            "batch_size": 8,
            "lr": 0.2,
            "hierarchical": {
                "num_clusters": 2,
                "local_rounds": 1,
                "assignment": "min_comm_cost",
                "client_costs": [[1, 9]] * 3 + [[9, 1]] * 3 + [joiner_costs],
                "aggregator_costs": [5, 7],
                "orchestration": {"budget": 10_000, "rva": {"enabled": True, "window": 2}},
            },
        },
        failures={"leave": [{"device": 6, "round": 1}]},
    )


def test_a_joiner_that_never_joins_changes_nothing_whatever_its_data_and_costs(tmp_path) -> None:
    runs = []
    for name, rule, costs in (
        ("small", {"classes": [0, 1], "per_class": 12}, [1, 9]),
        ("large", {"classes": [8, 9], "per_class": 60}, [9, 1]),
    ):
        sim, st, store, run_id = run_engine(tmp_path, _hier_original(rule, costs), name=name)
        rounds = [{k: v for k, v in r.items() if "time" not in k} for r in store.rounds(run_id)]
        runs.append((rounds, ledger(store, run_id)))
    (rounds_a, ledger_a), (rounds_b, ledger_b) = runs
    assert len(rounds_a) == 5 and rounds_a[-1]["test_accuracy"] > 0.2, rounds_a[-1]["test_accuracy"]
    assert rounds_a == rounds_b
    assert [(r["round"], r["level"], r["cost"]) for r in ledger_a] == [
        (r["round"], r["level"], r["cost"]) for r in ledger_b
    ]


def test_copies_are_made_only_where_the_computation_is_the_same() -> None:
    run = {"rounds": 52, "decisions": ["keep"], "final_accuracy": 0.5, "wall_s": 1.0}
    res = {
        "1/rva/0": run,
        "3/rva/0": {**run, "decisions": ["keep", "revert"]},
        "1/original/0": {**run, "decisions": []},
    }
    out = BENCH.with_derived(res)
    assert out["1/no_rva/0"] == {**run, "decisions": [], "derived_from": "1/rva/0"}
    assert "3/no_rva/0" not in out  # RVA reverted: the arm without RVA differs and must be run
    assert out["2/original/0"]["derived_from"] == "1/original/0"
    assert out["1/original/0"] is res["1/original/0"]  # a run made is never replaced by a copy
    assert "4/original/0" not in out and "2/rva/0" not in out
    assert "3 runs" in BENCH.render(out) and "2 cells copied" in BENCH.render(out)


def test_every_run_spent_what_the_configuration_costs_say() -> None:
    """Totals of the stored runs = C_round of the original configuration for rounds 1-10, then
    C_change and the new configuration's C_round (RVA kept) or the original's throughout."""

    res = json.loads(BENCH.RESULTS.read_text())
    checked = 0
    for key, run in res.items():
        e, arm, _ = key.split("/")
        c = BENCH.configuration_costs(int(e))
        if arm == "original":
            expected = run["rounds"] * c["original"]
        elif run["decisions"] in (["keep"], []):
            expected = 10 * c["original"] + c["change"] + (run["rounds"] - 10) * c["new"]
            assert run["change_cost"] == pytest.approx(c["change"]), key
        else:
            continue
        assert run["cost_total"] == pytest.approx(expected), key
        assert sum(BENCH.cost_per_round(int(e), arm, run)) == pytest.approx(expected), key  # the figure's curve
        assert run["cost_total"] >= 100_000 > run["cost_total"] - max(c.values())  # stopped once the budget was spent
        checked += 1
    assert checked >= 5


def _stored_rounds(run_dir) -> tuple[list[dict], Any]:
    """A run folder's rounds (less their wall times) and its ``runs`` row."""
    from tinytwin.store.db import RunStore

    store = RunStore(run_dir / "results.db")
    info = store.run_info()
    rounds = [{k: v for k, v in r.items() if "time" not in k} for r in store.rounds(info.run_id)]
    store.close()
    return rounds, info


def test_an_arm_stopped_mid_way_resumes_to_the_run_it_would_have_been(tmp_path, monkeypatch) -> None:
    from tinytwin.engines.runner import start_run
    from tinytwin.spec.load import validate_spec

    raw = _hier_original({"classes": [8, 9], "per_class": 20}, [9, 1])
    raw["failures"] = {"join": [{"device": 6, "round": 2}]}

    def stop_after_round_2(r: int, _: dict) -> None:
        if r == 2:
            raise KeyboardInterrupt  # the session ended

    with pytest.raises(KeyboardInterrupt):
        start_run(validate_spec(raw), json.dumps(raw), tmp_path, None, stop_after_round_2, tmp_path / "a", report=False)
    assert len(_stored_rounds(tmp_path / "a")[0]) == 2
    BENCH.run_to_completion(raw, tmp_path / "a")
    BENCH.run_to_completion(raw, tmp_path / "b")
    (resumed, info), (whole, _) = _stored_rounds(tmp_path / "a"), _stored_rounds(tmp_path / "b")
    assert info.status == "complete" and len(whole) == 5 and resumed == whole

    recorded = BENCH.record(tmp_path / "a")
    assert recorded["rounds"] == 5 and len(recorded["decisions"]) == len(recorded["rva_fits"]) == 1
    assert sum(recorded["cost_per_round"]) == pytest.approx(recorded["cost_total"])
    assert recorded["cost_per_round"][1] > recorded["cost_per_round"][0]  # the join's change cost, round 2
    monkeypatch.setattr(BENCH, "FIGURE", tmp_path / "seed004-rva.png")
    BENCH.plot_fits({"3/rva/1": recorded, "3/rva/0": {**recorded, "rva_fits": []}})  # the first with fits
    assert (tmp_path / "seed004-rva-fit-3.png").stat().st_size > 10_000
    assert "(reproductions/seed004-rva-fit-3.png)" in BENCH.render({"3/rva/1": recorded})

    BENCH.run_to_completion({**raw, "seed": 1}, tmp_path / "a")  # another experiment there: replaced
    assert _stored_rounds(tmp_path / "a")[1].seed == 1
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.db").write_bytes(b"")  # killed before its run was created
    BENCH.run_to_completion(raw, tmp_path / "c")
    assert _stored_rounds(tmp_path / "c")[0] == whole
    BENCH.run_to_completion(raw, tmp_path / "b")  # complete, and the same experiment: kept
    assert _stored_rounds(tmp_path / "b")[0] == whole


def test_the_docs_claim_that_keeping_beat_the_original_configuration_holds() -> None:
    """docs/reproductions.md says that where tinytwin's RVA kept, the original configuration run
    to its own budget stop ended lower; the figure beside it is drawn from the same file."""
    import json
    import statistics

    res = json.loads(BENCH.RESULTS.read_text())
    compared = 0
    for e in (1, 2, 3, 4):
        kept = [v["final_accuracy"] for k, v in res.items() if k.startswith(f"{e}/rva/") and v["decisions"] == ["keep"]]
        original = [v["final_accuracy"] for k, v in res.items() if k.startswith(f"{e}/original/")]
        if kept and original:
            assert statistics.mean(kept) > statistics.mean(original), e
            compared += 1
    assert compared >= 3
    block = BENCH.DOC.read_text().split(BENCH.BEGIN)[1].split(BENCH.END)[0]
    assert f"reproductions/{BENCH.FIGURE.name}" in block and BENCH.FIGURE.stat().st_size > 10_000
