"""Hierarchical FL: equality with FedAvg, minCommCost clustering, the cost ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfl_util import run_engine, spec_dict
from tinytwin.algorithms import hierarchical as H
from tinytwin.errors import SpecError
from tinytwin.spec.load import validate_spec
from tinytwin.store.dfl import ledger, round_metrics

COLUMNS = (
    "round",
    "sim_time_s",
    "duration_s",
    "train_loss",
    "test_accuracy",
    "test_loss",
    "bytes_up",
    "bytes_down",
    "energy_j",
    "completed",
)


def test_one_cluster_one_local_round_equals_fedavg_on_the_same_seed(tmp_path):
    common = dict(
        rounds=4,
        partition={"method": "dirichlet", "alpha": 0.5},
        topology={"kind": "full"},
        fleet={
            "groups": [
                {"profile": "esp32-s3", "count": 6, "link": "wifi"},
                {"profile": "nrf52840", "count": 4, "link": "ble"},
            ]
        },
    )
    train = {"local_epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.5}
    _, fa, fstore, fid = run_engine(tmp_path, spec_dict(**common, algorithm={"name": "fedavg", **train}), "fedavg")
    _, hi, hstore, hid = run_engine(
        tmp_path,
        spec_dict(
            **common,
            algorithm={"name": "hierarchical", **train, "hierarchical": {"num_clusters": 1, "local_rounds": 1}},
        ),
        "hier",
    )
    assert torch.equal(fa.global_params, hi.global_params)  # bit for bit
    a = [{k: r[k] for k in COLUMNS} for r in fstore.rounds(fid)]
    b = [{k: r[k] for k in COLUMNS} for r in hstore.rounds(hid)]
    assert a == b
    assert [r["global_accuracy"] for r in round_metrics(hstore, hid)] == [r["test_accuracy"] for r in a]


def test_min_comm_cost_matches_the_exhaustive_enumeration():
    rng = np.random.default_rng(7)
    for n, k in [(5, 2), (7, 3), (8, 2), (6, 4), (9, 3)]:
        for _ in range(3):
            cc = rng.integers(1, 20, size=(n, k)).astype(float)
            ac = rng.integers(1, 50, size=k).astype(float)
            fast, slow = H.min_comm_cost(cc, ac), H.min_comm_cost_exhaustive(cc, ac)
            assert np.isclose(H.objective(fast, cc, ac), H.objective(slow, cc, ac))
            assert sorted(np.bincount(fast, minlength=k)) == sorted(H.balanced_sizes(n, k))
    assert H.balanced_sizes(10, 3).tolist() == [4, 3, 3]
    assert H.balanced_assignment(5, 2).tolist() == [0, 0, 0, 1, 1]


def test_round_cost_ledger_and_change_cost_formulas():
    cc = np.array([[1.0, 5.0], [2.0, 1.0], [4.0, 3.0], [1.0, 2.0]])
    ac = np.array([10.0, 20.0])
    assign = np.array([0, 1, 1, 0])
    m = 0.5  # MB
    # C_round = (10 + 20)*M + L*(1 + 1 + 3 + 1)*M with L = 3
    assert np.isclose(H.round_cost(assign, cc, ac, m, 3), 30 * m + 3 * 6 * m)
    assert np.isclose(H.round_cost(assign, cc, ac, m, 0), 30 * m + 6 * m)  # L = 0 counts as 1
    rows = H.round_ledger(assign, cc, ac, m, 3)
    assert [r["level"] for r in rows] == ["client-la"] * 4 + ["la-ga"] * 2
    assert rows[2]["dst"] == "la 1" and np.isclose(rows[2]["cost"], 3 * 3.0 * m)
    flat = H.round_ledger(np.zeros(4, dtype=int), cc[:, :1], ac[:1], m, 1)
    assert [r["level"] for r in flat] == ["client-ga"] * 4  # flat FL: no LA term
    new = np.array([0, 0, 1, 0])
    assert np.isclose(H.change_cost(assign, new, cc, m), 2.0 / 2 * m)  # only client 1 moved
    assert np.isclose(H.change_cost(None, new, cc, m), (1 + 2 + 3 + 1) / 2 * m)


def test_hierarchical_run_clusters_by_cost_and_keeps_the_ledger(tmp_path):
    n, k = 6, 2
    cc = [[1.0, 9.0], [9.0, 1.0], [1.0, 9.0], [9.0, 1.0], [1.0, 9.0], [9.0, 1.0]]
    raw = spec_dict(
        rounds=3,
        fleet={"groups": [{"profile": "esp32-s3", "count": n, "link": "wifi"}]},
        algorithm={
            "name": "hierarchical",
            "batch_size": 16,
            "lr": 0.2,
            "hierarchical": {
                "num_clusters": k,
                "local_rounds": 2,
                "assignment": "min_comm_cost",
                "client_costs": cc,
                "aggregator_costs": [5.0, 7.0],
            },
        },
    )
    sim, st, store, run_id = run_engine(tmp_path, raw)
    summary = sim.summary(st, 0.0)
    assert summary["clusters"] == [[0, 2, 4], [1, 3, 5]]
    m = sim.model_mb
    c_round = (5 + 7) * m + 2 * 6 * 1.0 * m
    assert np.isclose(summary["cost_per_round"], c_round) and np.isclose(summary["cost_total"], 3 * c_round)
    rows = ledger(store, run_id)
    assert len(rows) == 3 * (n + k)
    assert np.isclose(sum(r["cost"] for r in rows if r["round"] == 2), c_round)
    rm = round_metrics(store, run_id)
    assert all(r["global_accuracy"] is not None and r["acc_min"] <= r["acc_max"] for r in rm)
    assert rm[-1]["global_accuracy"] > 0.5
    per_device = {}
    for row in store.device_rounds(run_id):
        per_device.setdefault(row["device"], []).append(row)
    assert all(len(v) == 3 and v[0]["bytes_up"] >= 2 * sim.up_bytes for v in per_device.values())


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"assignment": "given"}, "algorithm.hierarchical.clusters: assignment 'given' needs"),
        ({"assignment": "given", "clusters": [[0, 1, 2], [2, 3, 4, 5, 6, 7]]}, "device 2 is in two clusters"),
        ({"num_clusters": 2, "client_costs": [[1.0, 2.0]] * 7}, "must be 8 rows"),
        ({"num_clusters": 2, "aggregator_costs": [1.0]}, "must list 2 costs"),
        ({"num_clusters": 9}, "9 clusters for 8 devices"),
    ],
)
def test_bad_hierarchical_specs_name_the_key(change, expected):
    with pytest.raises(SpecError, match=expected.replace("(", r"\(")):
        validate_spec(spec_dict(algorithm={"name": "hierarchical", "hierarchical": change}))
