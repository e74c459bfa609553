"""Decentralized averaging and gossip: consensus, merge rules, async clocks, end-to-end runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from dfl_util import communicate_only, distinct_models, engine, resume_engine, run_engine, spec_dict
from tinytwin.algorithms import gossip as GS
from tinytwin.algorithms.segments import contiguous_bounds, segment_pull
from tinytwin.net.topology import ring
from tinytwin.store.dfl import device_metrics, round_metrics


def _consensus(x: torch.Tensor) -> float:
    x = x.to(torch.float64)
    return float((x - x.mean(0)).norm(dim=1).mean())


@pytest.mark.parametrize(
    "algorithm,topology",
    [
        ({"name": "decfedavg"}, {"kind": "ring"}),
        ({"name": "decfedavg", "decfedavg": {"mixing_steps": 2}}, {"kind": "small_world", "k": 2, "beta": 0.3}),
        (
            {"name": "gossip", "gossip": {"merge": "average", "exchange": "push_pull", "peer": "neighbour"}},
            {"kind": "ring"},
        ),
        (
            {"name": "gossip", "gossip": {"merge": "average", "exchange": "push_pull", "peer": "random", "sends": 2}},
            {"kind": "full"},
        ),
    ],
)
def test_learning_off_averaging_converges_to_the_initial_mean_and_conserves_it(tmp_path, algorithm, topology):
    sim, st = engine(
        tmp_path, spec_dict(algorithm={"local_epochs": 1, "batch_size": 8, **algorithm}, topology=topology)
    )
    x0 = distinct_models(sim, st)
    mean0 = x0.to(torch.float64).mean(0)
    start = _consensus(x0)
    for r in range(1, 81):
        communicate_only(sim, st, r)
        assert float((st.params.to(torch.float64).mean(0) - mean0).abs().max()) < 1e-5, r  # conserved each round
    assert _consensus(st.params) < 1e-3 * start  # consensus reached
    assert float((st.params.to(torch.float64) - mean0).abs().max()) < 1e-3  # ... at the initial mean


def test_push_only_average_gossip_mixes_but_server_free_keeps_mean_only_on_regular_graphs(tmp_path):
    sim, st = engine(tmp_path, spec_dict(algorithm={"name": "serverfree"}, topology={"kind": "ring"}))
    x0 = distinct_models(sim, st)
    for r in range(1, 80):
        communicate_only(sim, st, r)
    assert torch.allclose(st.params.mean(0), x0.mean(0), atol=1e-5) and _consensus(st.params) < 1e-3 * _consensus(x0)
    sim, st = engine(tmp_path, spec_dict(algorithm={"name": "gossip", "gossip": {"merge": "average"}}))
    x0 = distinct_models(sim, st)
    for r in range(1, 80):
        communicate_only(sim, st, r)
    assert _consensus(st.params) < 0.05 * _consensus(x0)  # push-only averaging still mixes


def test_fifo_buffer_keeps_the_last_models_and_replaces_the_model_by_their_mean():
    d, b, p = 3, 2, 4
    buf = torch.zeros(d, b, p)
    count = torch.full((d,), b)
    head = torch.zeros(d, dtype=torch.int64)
    models = torch.arange(4 * p, dtype=torch.float32).reshape(4, p)
    GS.fifo_push(buf, count, head, np.array([1, 1, 1, 2]), models)
    assert torch.equal(GS.fifo_mean(buf, count, torch.tensor([1]))[0], (models[1] + models[2]) / 2)
    assert torch.equal(GS.fifo_mean(buf, count, torch.tensor([2]))[0], models[3] / 2)  # one new + initial zeros
    assert torch.equal(GS.fifo_mean(buf, count, torch.tensor([0]))[0], torch.zeros(p))


def test_seed004_fifo_gossip_starts_from_the_buffer_mean(tmp_path):
    sim, st = engine(tmp_path, spec_dict(algorithm={"name": "gossip", "gossip": {"merge": "fifo", "peer": "random"}}))
    init = st.params[0].clone()
    assert torch.equal(st.proto["buffer"][5, 0], init) and int(st.proto["count"][5]) == 2
    st.params = torch.randn_like(st.params)
    before = st.params.clone()
    online = np.ones(sim.n, dtype=bool)
    ctx = sim._ctx(1, 1, online, 0.0)
    msgs = sim.proto.after_train(st, np.arange(sim.n), ctx)
    sim.proto.deliver(st, msgs)
    assert torch.equal(st.params, before)  # receiving only fills the FIFO
    d = int(msgs.dst[0])
    sim.proto.before_train(st, np.array([d]), ctx)
    last = [before[int(s)] for s, t in zip(msgs.src, msgs.dst) if t == d][-2:]
    expected = (init + last[0]) / 2 if len(last) == 1 else (last[0] + last[1]) / 2
    assert torch.allclose(st.params[d], expected)  # own update dropped (seed 004)


def test_age_weighted_merge_formula():
    own, recv = torch.tensor([[1.0, 3.0], [2.0, 2.0]]), torch.tensor([[5.0, -1.0], [4.0, 0.0]])
    m, age = GS.merge_age(own, torch.tensor([3, 0]), recv, torch.tensor([1, 0]))
    assert torch.allclose(m[0], (3 * own[0] + 1 * recv[0]) / 4) and torch.allclose(m[1], (own[1] + recv[1]) / 2)
    assert age.tolist() == [3, 0]


def test_peer_choice_respects_the_graph_and_never_picks_the_sender():
    rng = np.random.default_rng(0)
    topo = ring(10)
    online = np.ones(10, dtype=bool)
    src, dst = GS.choose_peers(rng, np.arange(10), 50, online, topo.neighbours())
    assert ((dst - src) % 10 == 1).sum() + ((src - dst) % 10 == 1).sum() == src.size
    online[3] = False
    src, dst = GS.choose_peers(rng, np.flatnonzero(online), 200, online, None)
    assert (src != dst).all() and 3 not in dst
    counts = np.bincount(dst[src == 0], minlength=10)[[1, 2, 4, 5, 6, 7, 8, 9]]
    assert counts.min() > 10  # uniform over the other online devices


def test_segment_pull_is_the_data_size_weighted_mean_per_segment():
    params = torch.tensor([[0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 8.0, 8.0], [2.0, 2.0, 6.0, 6.0]])
    n = torch.tensor([1.0, 3.0, 1.0])
    bounds = contiguous_bounds(4, 2)
    peers = np.array([[[1, 2], [1, -1]]])  # device 0 pulls segment 0 from 1 and 2, segment 1 from 1
    out = segment_pull(params, n, np.array([0]), peers, bounds)[0]
    assert torch.allclose(out[:2], torch.tensor([(0 + 3 * 4 + 2) / 5] * 2))
    assert torch.allclose(out[2:], torch.tensor([(0 + 3 * 8) / 4] * 2))
    assert bounds.tolist() == [0, 2, 4] and contiguous_bounds(10, 3).tolist() == [0, 4, 7, 10]


def test_async_gossip_faster_devices_send_more_messages_in_the_ratio_of_their_speeds(tmp_path):
    groups = [
        {"name": "fast", "profile": "esp32-s3", "count": 4, "link": "ethernet", "overrides": {"flops_per_s": 3.0e7}},
        {"name": "slow", "profile": "esp32-s3", "count": 4, "link": "ethernet", "overrides": {"flops_per_s": 1.0e7}},
    ]
    raw = spec_dict(
        rounds=8,
        fleet={"groups": groups},
        topology={"kind": "full"},
        algorithm={
            "name": "gossip",
            "schedule": "async",
            "gossip": {"peer": "random"},
            "local_epochs": 1,
            "batch_size": 32,
            "lr": 0.3,
        },
    )
    sim, st, store, run_id = run_engine(tmp_path, raw)
    rows = device_metrics(store, run_id)
    sent = np.zeros(8)
    for r in rows:
        sent[r["device"]] += r["messages_sent"]
    fast, slow = sent[:4].mean(), sent[4:].mean()
    expected = sim.period_s[4:].mean() / sim.period_s[:4].mean()
    assert abs(expected - 3.0) < 0.1  # periods follow the compute speeds
    assert slow >= 7 and abs(fast / slow - expected) / expected < 0.1, (fast, slow, expected)
    assert st.accuracies[-1][1] > 0.5


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "decfedavg", "momentum": 0.5},
        {"name": "serverfree"},
        {"name": "gossip", "gossip": {"merge": "age", "sends": 2}},
        {"name": "segmented_gossip", "segments": {"count": 4, "replicas": 2}},
        {"name": "gist", "gist": {"sends": 4, "min_received": 3}},
    ],
)
def test_decentralized_algorithms_learn_and_record_every_metric(tmp_path, algorithm):
    raw = spec_dict(
        rounds=6,
        topology={"kind": "small_world", "k": 4, "beta": 0.2},
        algorithm={"local_epochs": 1, "batch_size": 16, "lr": 0.2, **algorithm},
    )
    sim, st, store, run_id = run_engine(tmp_path, raw)
    summary = sim.summary(st, 0.0)
    rm = round_metrics(store, run_id)
    assert len(rm) == 6 and rm[-1]["acc_mean"] > 0.6, rm[-1]
    assert all(r["acc_min"] <= r["acc_mean"] <= r["acc_max"] and r["acc_std"] >= 0 for r in rm)
    assert rm[-1]["consensus_distance"] > 0 and all(r["messages"] > 0 for r in rm)
    rounds = store.rounds(run_id)
    assert [r["test_accuracy"] for r in rounds] == [r["acc_mean"] for r in rm]
    dev = store.device_rounds(run_id)
    assert len(dev) == 6 * 8 and all(d["bytes_up"] > 0 and d["energy_j"] > 0 and d["up_s"] > 0 for d in dev)
    assert sum(d["bytes_up"] for d in dev) == sum(d["bytes_down"] for d in dev) == summary["bytes_up"]
    assert summary["final_accuracy_across_devices"]["mean"] == rm[-1]["acc_mean"] == summary["final_accuracy"]
    assert summary["memory_fits"] and summary["messages"] == sum(r["messages"] for r in rm)


def test_killed_async_gist_run_resumes_to_the_same_results(tmp_path):
    raw = spec_dict(
        rounds=5,
        topology={"kind": "full"},
        algorithm={
            "name": "gist",
            "schedule": "async",
            "lr_schedule": {"name": "both"},
            "batch_size": 32,
            "gist": {"sends": 3, "min_received": 2, "buffer_size": 4, "peer": "random"},
        },
    )
    run_engine(tmp_path, raw, "killed", stop_after=3)
    resumed = resume_engine(tmp_path, raw, "killed")
    full = run_engine(tmp_path, raw, "full")

    def rows(store, rid):
        return (
            [
                (r["round"], r["test_accuracy"], r["sim_time_s"], r["bytes_up"], r["energy_j"])
                for r in store.rounds(rid)
            ],
            [
                (r["round"], r["device"], r["lr"], r["messages_sent"], r["test_accuracy"])
                for r in device_metrics(store, rid)
            ],
        )

    assert rows(*resumed[2:]) == rows(*full[2:])
    assert torch.equal(resumed[1].params, full[1].params)
    assert len(resumed[1].clock["inflight"]) == len(full[1].clock["inflight"])


def test_cli_run_of_a_decentralized_spec_writes_the_report_with_spread_plots(tmp_path):
    from conftest import run_cli, write_spec

    spec = write_spec(
        tmp_path / "g.yaml",
        yaml.safe_dump(
            spec_dict(rounds=2, algorithm={"name": "gossip", "batch_size": 32, "lr_schedule": {"name": "adastair"}})
        ),
    )
    proc = run_cli("run", str(spec), "--out", str(tmp_path / "runs"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "final accuracy" in proc.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    html = (run_dir / "report.html").read_text()
    assert "shared test set" in html and "Consensus distance" in html
    for name in ("round_metrics.csv", "device_metrics.csv", "rounds.csv"):
        assert (run_dir / "csv" / name).is_file()
    again = run_cli("report", str(run_dir))
    assert again.returncode == 0 and (run_dir / "plots" / "consensus.png").is_file()
