"""Decentralized emulation: device-to-device models match the simulator; kills; frame checks;
Gist and segmented gossip; firmware devices (the C client on QEMU) as peers."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli, write_spec
from dfl_util import distinct_models, engine, run_engine, spec_dict
from emulate_util import stored_tables
from tinytwin.algorithms import gist as G
from tinytwin.algorithms import gist_np as GN
from tinytwin.algorithms import gossip as GS
from tinytwin.algorithms.mixing import mix
from tinytwin.algorithms.segments import contiguous_bounds, segment_pull
from tinytwin.emulate import mlp_np
from tinytwin.emulate.coordinator import EmulateOptions, check_emulatable, start_emulation
from tinytwin.emulate.dfl_directory import link_key, plan_round
from tinytwin.emulate.model_rows import mlp_rows
from tinytwin.emulate.peer import AGE_HEADER, PULL_REQUEST, PeerRuntime
from tinytwin.emulate.peer_merge import Fifo, merge_age, merge_average, mix_row
from tinytwin.emulate.peer_net import COORDINATOR_CONN
from tinytwin.emulate.peer_trainer import NumpyPeerTrainer
from tinytwin.emulate.wire_np import COORDINATOR_ID, derive_key
from tinytwin.engines.experiment import prepare
from tinytwin.engines.network import build_network
from tinytwin.errors import TinyTwinError
from tinytwin.net.topology import metropolis_hastings, ring
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.load import validate_spec
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm

LOSSLESS = {
    "groups": [{"profile": "esp32-s3", "count": 8, "link": "wifi", "link_overrides": {"loss": 0.0, "header_bytes": 0}}]
}


def _emulate(tmp_path: Path, raw: dict, **opts):
    spec = validate_spec(raw)
    return start_emulation(
        spec, yaml.safe_dump(raw), tmp_path / "emu", None, EmulateOptions(time_scale=0.0, **opts), report=False
    )


def _tables(run_dir: Path):
    return stored_tables(run_dir)


# ---------------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize(
    "changes",
    [
        {"algorithm__name": "decfedavg", "algorithm__decfedavg": {"mixing_steps": 2}},
        {"algorithm__name": "gossip", "algorithm__gossip": {"merge": "fifo", "sends": 2}},
        {
            "algorithm__name": "gossip",
            "algorithm__gossip": {"merge": "age", "peer": "random", "sends": 2},
            "topology": {"kind": "small_world", "k": 4, "beta": 0.3},
        },
        {
            "algorithm__name": "decfedavg",
            "failures": {
                "leave": [{"device": 2, "round": 2}],
                "join": [{"device": 5, "round": 3}, {"device": 2, "round": 4}],
            },
            "topology": {
                "kind": "ring",
                "link_events": [
                    {"round": 2, "edges": [[0, 1], [3, 4]], "state": "down"},
                    {"round": 4, "edges": [[0, 1]], "state": "up"},
                ],
            },
        },
        {"algorithm__name": "gist", "algorithm__gist": {"sends": 3}, "algorithm__lr_schedule": {"name": "adastair"}},
        {
            "algorithm__name": "gist",
            "topology": {"kind": "small_world", "k": 4, "beta": 0.3},
            "algorithm__gist": {
                "sends": 2,
                "peer": "random",
                "segmentation": "random",
                "selection": "softmax",
                "drop_lowest": True,
                "merge": "vanilla",
                "min_received": 2,
                "buffer_size": 3,
            },
            "failures": {"leave": [{"device": 2, "round": 3}], "join": [{"device": 5, "round": 2}]},
        },
        {
            "algorithm__name": "segmented_gossip",
            "algorithm__segments": {"count": 3, "replicas": 2},
            "failures": {"leave": [{"device": 6, "round": 2}]},
        },
        {
            "algorithm__name": "decfedavg",
            "attacks": [{"kind": "scale", "scale": -5.0, "devices": [1]}],
            "algorithm__aggregator": {"name": "median"},
        },
        {
            "algorithm__name": "serverfree",
            "attacks": [{"kind": "gaussian", "sigma": 0.5, "devices": [2]}],
            "algorithm__aggregator": {"name": "trimmed_mean", "beta": 0.25},
        },
    ],
    ids=[
        "decfedavg",
        "gossip-fifo",
        "gossip-age-random",
        "decfedavg-churn-links-down",
        "gist-adastair",
        "gist-sdfa-random-peers-churn",
        "segmented-gossip",
        "decfedavg-poisoning-peer-median-merge",
        "serverfree-noisy-peer-trimmed-merge",
    ],
)
def test_models_match_the_simulator(tmp_path: Path, changes: dict) -> None:
    worst = _twins_agree(tmp_path, spec_dict(rounds=4, fleet=LOSSLESS, **changes))
    assert worst <= 1e-4, worst  # measured ~1e-7 (float32 summation order)


@pytest.mark.parametrize(
    "gossip, topology",
    [
        ({"merge": "average", "exchange": "push_pull", "sends": 2}, {"kind": "ring"}),
        (
            {"merge": "age", "exchange": "push_pull", "peer": "random", "sends": 2},
            {"kind": "small_world", "k": 4, "beta": 0.3},
        ),
    ],
    ids=["average-neighbour", "age-random"],
)
def test_push_pull_pairs_match_the_simulator(tmp_path: Path, gossip: dict, topology: dict) -> None:
    """gossip push_pull: each device walks its pairs in the simulator's global order and both
    ends merge; the models are the simulator's (float32 rounding at most)."""
    raw = spec_dict(rounds=3, fleet=LOSSLESS, algorithm__name="gossip", algorithm__gossip=gossip, topology=topology)
    spec = validate_spec(raw)
    sim, _ = engine(tmp_path, raw)
    plan = plan_round(spec.algorithm, spec.seed, sim.net, np.ones(8, dtype=bool), 1)
    assert sum(len(e.send) for e in plan.entries.values()) == 2 * 2 * 8  # both ends of every pair
    worst = _twins_agree(tmp_path, raw)
    assert worst <= 1.2e-7, worst


def _twins_agree(tmp_path: Path, raw: dict) -> float:
    """Run ``raw`` on both twins, check the rounds, bytes and messages agree; the largest
    difference of a device's final model."""
    _, sim_state, sim_store, sim_id = run_engine(tmp_path, raw, name="sim")
    sim_rounds = sim_store.rounds(sim_id)
    run_dir, summary = _emulate(tmp_path, raw)
    info, rounds, dev_rows, _, rm, _ = _tables(run_dir)
    assert info.twin == "emulate" and info.status == "complete"
    models = np.load(run_dir / "emulate" / "final_models.npz")
    sim = sim_state.params.numpy()
    worst = max(float(np.abs(models[f"d{d}"] - sim[d]).max()) for d in range(sim.shape[0]))
    assert abs(summary["final_accuracy"] - sim_state.accuracies[-1][1]) <= 0.01
    # lossless links without packet headers: the frames are the simulator's bytes exactly
    assert [r["bytes_up"] for r in rounds] == [r["bytes_up"] for r in sim_rounds]
    assert [r["bytes_down"] for r in rounds] == [r["bytes_down"] for r in sim_rounds]
    assert summary["messages"] == sim_state.messages == summary["emulate"]["messages_planned"]
    assert [r["completed"] for r in rounds] == [r["completed"] for r in sim_rounds]
    assert len(dev_rows) == sum(r["selected"] for r in sim_rounds)
    assert all(m["consensus_distance"] is not None for m in rm)
    e = summary["emulate"]
    assert e["devices_with_torch"] == 0 and e["frames_rejected"] == {} and e["merge_timeouts"] == 0
    assert 0 < e["device_rss_kb"]["max"] <= 64 * 1024
    return worst


# ---------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("algorithm", ["gossip", "decfedavg", "gist", "segmented_gossip"])
def test_killed_devices_leave_and_the_rest_keep_merging(tmp_path: Path, algorithm: str) -> None:
    """20 % of the fleet is SIGKILLed during round 2; every later round runs on the remaining graph."""
    raw = spec_dict(
        algorithm__name=algorithm,
        algorithm__gossip={"sends": 2},
        rounds=5,
        fleet={"groups": [{"profile": "esp32-s3", "count": 10, "link": "wifi"}]},
        topology={"kind": "small_world", "k": 4, "beta": 0.2},
        failures={"permanent": [{"device": 3, "round": 2}, {"device": 7, "round": 2}]},
    )
    run_dir, summary = _emulate(tmp_path, raw, round_timeout_s=60)
    _, rounds, dev_rows, events, rm, dm = _tables(run_dir)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    kills = [e for e in events if e["kind"] == "killed"]
    assert {(e["round"], e["device"]) for e in kills} == {(2, 3), (2, 7)}
    assert [(r["selected"], r["completed"], r["dropped"]) for r in rounds] == [
        (10, 10, 0),
        (10, 8, 2),
        (8, 8, 0),
        (8, 8, 0),
        (8, 8, 0),
    ]
    survivors = sorted(set(range(10)) - {3, 7})
    status = {(d["round"], d["device"]): d["status"] for d in dev_rows}
    assert status[(2, 3)] == status[(2, 7)] == "dropped"
    assert all(status[(r, d)] == "ok" for r in range(2, 6) for d in survivors)
    assert not any(d["device"] in (3, 7) for d in dev_rows if d["round"] > 2)
    for r in range(3, 6):  # lossless links: every model sent on the remaining graph is received and merged
        rows = [m for m in dm if m["round"] == r]
        assert sum(m["messages_received"] for m in rows) == sum(m["messages_sent"] for m in rows) > 0
    assert all(any(m["messages_received"] for m in dm if m["device"] == d and m["round"] >= 2) for d in survivors)
    # the survivors heard of the deaths from the coordinator, not from a timeout
    assert summary["emulate"]["merge_timeouts"] == 0 and summary["emulate"]["peer_down_sent"] > 0
    assert rounds[-1]["test_accuracy"] > rounds[0]["test_accuracy"]
    assert rm[-1]["components"] >= 1


def test_forged_frames_sent_to_a_live_peer_are_rejected_and_counted(tmp_path: Path) -> None:
    """An intruder connects to device 0's listening port: a frame under a made-up key, a frame
    posing as a neighbour, and garbage. None is merged; the run goes on; all are counted."""
    raw = spec_dict(algorithm__name="decfedavg", rounds=3)
    run_dir = tmp_path / "emu" / "run"

    def intrude(r: int, _info: dict) -> None:
        if r != 1:
            return
        port = int(re.search(r"port (\d+)", (run_dir / "emulate" / "logs" / "d0.log").read_text()).group(1))
        with socket.create_connection(("127.0.0.1", port)) as s1:
            s1.sendall(
                _model(5, 1, rnd=2, key=b"k" * 32, receiver=0)  # non-neighbour 5: no link key
                + _model(1, 2, rnd=2, key=b"k" * 32, receiver=0)
            )  # posing as neighbour 1
        with socket.create_connection(("127.0.0.1", port)) as s2:
            s2.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(64))  # not a frame at all

    spec = validate_spec(raw)
    _, summary = start_emulation(
        spec,
        yaml.safe_dump(raw),
        tmp_path,
        None,
        EmulateOptions(time_scale=0.0),
        progress=intrude,
        run_dir=run_dir,
        report=False,
    )
    assert summary["emulate"]["frames_rejected"] == {"unknown_sender": 1, "bad_tag": 1, "bad_magic": 1}
    _, rounds, _, events, _, _ = _tables(run_dir)
    assert [r["completed"] for r in rounds] == [8, 8, 8]
    assert any(e["kind"] == "frame_rejected" and e["device"] == 0 for e in events)


# ---------------------------------------------------------------------------------- frame checks

P, SIZES = 12, [8, 4]
RUN_KEY = b"r" * 32


def _runtime(with_age: bool = False) -> PeerRuntime:
    """Device 0 with links to 1 and 2 only; in round 3 it expects one model from 1."""
    rt = PeerRuntime(
        0,
        derive_key(RUN_KEY, 0),
        {1: link_key(RUN_KEY, 0, 1), 2: link_key(RUN_KEY, 0, 2)},
        P,
        SIZES,
        "float32",
        with_age=with_age,
    )
    rt.start_round(3, True, {1: 1})
    return rt


def _model(
    sender: int,
    nonce: int,
    rnd: int = 3,
    values: np.ndarray | None = None,
    key: bytes | None = None,
    receiver: int = 0,
    t: fm.MsgType = fm.MsgType.MODEL,
) -> bytes:
    values = np.arange(P, dtype=np.float32) if values is None else values
    key = link_key(RUN_KEY, 0, sender) if key is None else key
    return fm.encode_frame(fm.Frame(t, sender, receiver, rnd, "float32", 0, nonce, enc.encode(values, "float32")), key)


def test_peer_rejects_forged_foreign_stale_replayed_and_nan_frames() -> None:
    rt = _runtime()
    good = _model(1, 10)
    assert rt.handle(good, 5) is not None  # binds connection 5 to device 1
    bad_tag = bytearray(_model(1, 11))
    bad_tag[40] ^= 1
    nan = np.full(P, np.nan, dtype=np.float32)
    cases = {
        "bad_tag": [bytes(bad_tag), _model(1, 12, key=link_key(RUN_KEY, 5, 0))],  # a non-neighbour posing as 1
        "unknown_sender": [_model(5, 13, key=link_key(RUN_KEY, 0, 5))],  # non-neighbour: no link key
        "replayed": [good],
        "wrong_receiver": [_model(1, 14, receiver=2)],
        "stale_round": [_model(1, 15, rnd=2), _model(1, 16, rnd=9)],
        "non_finite": [_model(1, 17, values=nan)],
        "unexpected_type": [_model(1, 18, t=fm.MsgType.CONTROL)],
        "not_expected": [_model(1, 19)],  # a second model from 1
    }
    for reason, frames in cases.items():
        for data in frames:
            assert rt.handle(data, 5) is None, reason
        assert rt.rejected[reason] == len(frames), (reason, dict(rt.rejected))
    assert rt.handle(_model(2, 20), 5) is None and rt.rejected["wrong_sender"] == 1  # 2's frame on 1's connection
    assert rt.handle(_model(2, 21), 6) is None and rt.rejected["not_expected"] == 2  # 2 does not send in round 3

    def coord(nonce: int) -> bytes:
        return fm.encode_frame(
            fm.Frame(fm.MsgType.CONTROL, COORDINATOR_ID, 0, 4, "none", 0, nonce, b'{"cmd": "stop"}'),
            derive_key(RUN_KEY, 0),
        )

    assert rt.handle(coord(1), 7) is None and rt.rejected["wrong_sender"] == 2  # coordinator off its link
    assert rt.handle(coord(2), COORDINATOR_CONN) == ("control", {"cmd": "stop"})
    [msg] = rt.take(1)
    assert msg.sender == 1 and np.array_equal(msg.values, np.arange(P, dtype=np.float32))
    assert rt.waiting_for(1) == []


def test_peer_keeps_early_models_and_stops_waiting_for_dead_neighbours() -> None:
    rt = _runtime(with_age=True)
    early = fm.encode_frame(
        fm.Frame(
            fm.MsgType.MODEL,
            2,
            0,
            4,
            "float32",
            0,
            5,
            AGE_HEADER.pack(7) + enc.encode(np.ones(P, np.float32), "float32"),
        ),
        link_key(RUN_KEY, 0, 2),
    )
    assert rt.handle(early, 1) == ("model", None)  # round 4 has not started here yet
    assert rt.waiting_for(1) == [1]
    rt.peer_gone(1)
    assert rt.waiting_for(1) == [] and rt.take(1) == []
    rt.finish_round()
    rt.start_round(4, True, {2: 1, 1: 1})
    [msg] = rt.take(1)
    assert (msg.sender, msg.round, msg.age) == (2, 4, 7)


# ---------------------------------------------------------------------------------- one definition


def test_numpy_merges_equal_the_simulators_torch_rules() -> None:
    g = torch.Generator().manual_seed(0)
    own, recv = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    ref = GS.merge_average(own[:1], recv.sum(dim=0, keepdim=True), torch.tensor([3]))[0]
    assert np.allclose(merge_average(own[0].numpy(), list(recv.numpy())), ref.numpy(), atol=1e-6)
    w, a = own[:1], torch.tensor([2])
    for i, age in enumerate([0, 5, 1]):
        w, a = GS.merge_age(w, a, recv[i : i + 1], torch.tensor([age]))
    got, got_age = merge_age(own[0].numpy(), 2, [(recv[i].numpy(), age) for i, age in enumerate([0, 5, 1])])
    assert np.allclose(got, w[0].numpy(), atol=1e-6) and got_age == int(a[0])
    buf = own[:1, None, :].repeat(1, 2, 1).clone()
    count, head = torch.tensor([2]), torch.tensor([0])
    GS.fifo_push(buf, count, head, np.zeros(3, dtype=np.int64), recv)
    fifo = Fifo(own[0].numpy(), 2)
    for z in recv.numpy():
        fifo.push(z)
    assert np.allclose(fifo.mean(), GS.fifo_mean(buf, count, torch.tensor([0]))[0].numpy(), atol=1e-6)
    x = torch.randn(6, 20, generator=g)
    wmh = metropolis_hastings(6, ring(6).edges)
    row = wmh.getrow(2).toarray()[0]
    mixed = mix_row(x[2].numpy(), row[2], [(row[j], x[j].numpy()) for j in (1, 3)])
    assert np.allclose(mixed, mix(wmh, x)[2].numpy(), atol=1e-6)
    # a neighbour that never sent: its weight goes back to the device itself (row still sums to 1)
    lonely = mix_row(x[2].numpy(), row[2], [(row[1], x[1].numpy())], missing_weight=row[3])
    assert np.allclose(lonely, (row[2] + row[3]) * x[2].numpy() + row[1] * x[1].numpy(), atol=1e-6)


def test_directory_rows_are_the_simulators_mixing_matrix() -> None:
    spec = validate_spec(spec_dict(algorithm__name="decfedavg", topology={"kind": "small_world", "k": 4, "beta": 0.3}))
    exp = prepare(spec)
    net = build_network(spec, exp.fleet)
    online = np.ones(8, dtype=bool)
    online[5] = False
    plan = plan_round(spec.algorithm, spec.seed, net, online, 2)
    w = metropolis_hastings(8, net.topology.active_edges(net.links.edge_up(2), online), online).toarray()
    for d in range(8):
        e = plan.entries[d]
        assert e.online == (d != 5)
        if d != 5:
            assert e.self_weight == pytest.approx(w[d, d])
            assert e.weights == pytest.approx({j: w[d, j] for j in np.flatnonzero(w[d]) if j != d})
            assert set(e.expect) == set(e.send) == set(e.weights) and 5 not in e.send


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"algorithm__name": "segmented_gossip", "algorithm__encoding": "int8"}, "simulation-only"),
        ({"algorithm__name": "gossip", "algorithm__schedule": "async"}, "lock-step"),
    ],
)
def test_unsupported_decentralized_runs_are_refused_in_one_line(changes: dict, words: str) -> None:
    with pytest.raises(TinyTwinError, match=words) as exc:
        check_emulatable(validate_spec(spec_dict(**changes)))
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------- process and CLI


def test_peer_processes_never_import_torch() -> None:
    code = (
        "import sys, tinytwin.emulate.forkserver, tinytwin.emulate.peer; "
        "assert 'torch' not in sys.modules, 'torch in a device process'"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_cli_routes_decentralized_specs_to_the_peer_engine(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "dfl.yaml", yaml.safe_dump(spec_dict(algorithm__name="decfedavg", rounds=2)))
    ok = run_cli("emulate", str(spec), "--out", str(tmp_path / "runs"), "--time-scale", "0", "--quiet", "--no-report")
    assert ok.returncode == 0, ok.stderr
    assert "frames rejected 0" in " ".join(ok.stdout.split())
    [run_dir] = (tmp_path / "runs").iterdir()
    assert run_cli("report", str(run_dir)).returncode == 0 and (run_dir / "plots" / "consensus.png").is_file()
    bad = write_spec(tmp_path / "async.yaml", yaml.safe_dump(spec_dict(algorithm__schedule="async")))
    refused = run_cli("emulate", str(bad), "--out", str(tmp_path / "runs"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr


# ---------------------------------------------------------------------------------- Gist, segmented gossip


@pytest.mark.parametrize(
    "gist",
    [
        {"sends": 3},
        {"sends": 2, "segmentation": "random", "selection": "uniform", "merge": "vanilla"},
        {"sends": 3, "peer": "random", "selection": "softmax", "drop_lowest": True, "segments": 4},
    ],
    ids=["importance", "sdfa", "softmax-random-peers"],
)
def test_a_devices_gist_choices_are_the_simulators(tmp_path: Path, gist: dict) -> None:
    """Per device, in numpy, with its directory entry (row, first message): the same validation
    accuracy, bands, band draws and segment values as the simulator's Gist.after_train."""
    raw = spec_dict(algorithm__name="gist", algorithm__gist=gist, topology={"kind": "small_world", "k": 4, "beta": 0.3})
    sim, st = engine(tmp_path, raw)
    distinct_models(sim, st)
    spec = validate_spec(raw)
    g = spec.algorithm.gist
    online = np.ones(sim.n, dtype=bool)
    online[3] = False  # a gap: rows and message offsets shift
    ids, r = np.flatnonzero(online), 2
    msgs = sim.proto.after_train(st, ids, sim._ctx(r, r, online, 0.0))
    plan = plan_round(spec.algorithm, spec.seed, sim.net, online, r)
    linears = mlp_np.linears_from(mlp_rows(sim.exp))
    x_val, y_val = sim.x_val.numpy().reshape(len(sim.y_val), -1), sim.y_val.numpy()
    p = sim.num_params
    bounds = GN.band_bounds(p, g.segments)
    chosen = set()
    for d in ids.tolist():
        e, sel = plan.entries[d], np.flatnonzero(msgs.src == d)
        assert msgs.dst[sel].tolist() == e.send
        w = st.params[d].numpy()
        assert mlp_np.evaluate(linears, w, x_val, y_val)[0] == float(st.proto["acc"][d])
        where = e.extra["gist"]
        order = GN.band_order(w) if g.segmentation == "importance" else GN.random_order(spec.seed, r, where["row"], p)
        probs = GN.selection_probabilities(GN.band_importance(w, order, bounds), g.selection, g.exp_base, g.drop_lowest)
        bands = GN.choose_bands(probs, GN.send_uniforms(spec.seed, r, where["offset"], len(e.send)))
        chosen.update(bands.tolist())
        for k, m in enumerate(sel.tolist()):
            mask = GN.segment_mask(order, bounds, int(bands[k]))
            assert np.array_equal(np.flatnonzero(mask), msgs.data["idx"][m].numpy())
            assert np.array_equal(w[mask], msgs.data["vals"][m].numpy())
            assert len(GN.encode_payload(0.5, w, mask)) == msgs.payload[m]
    assert len(chosen) > 1


def test_numpy_gist_and_segment_pull_equal_the_torch_definitions() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 203, generator=gen)
    w[0, :10] = 0.5  # ties in |w|: broken by index in both
    bounds = G.band_bounds(203, 5)
    order_t = G.band_order(w)
    imp_t = G.band_importance(w, order_t, bounds)
    for d in range(4):
        order = GN.band_order(w[d].numpy())
        assert np.array_equal(order, order_t[d].numpy())
        imp = GN.band_importance(w[d].numpy(), order, bounds)
        assert np.allclose(imp, imp_t[d].numpy(), rtol=1e-7, atol=0)
        for mode in ("proportional", "softmax", "uniform"):
            for drop in (False, True):
                ref = G.selection_probabilities(imp_t, mode, 2.0, drop)[d].numpy()
                got = GN.selection_probabilities(imp_t[d].numpy(), mode, 2.0, drop)
                assert np.allclose(got, ref, rtol=0, atol=1e-15)
    ref_order = G.random_order(stream_rng(7, Stream.BANDS, 3, 1), 4, 203).numpy()
    assert all(np.array_equal(GN.random_order(7, 3, row, 203), ref_order[row]) for row in range(4))
    assert np.array_equal(GN.send_uniforms(7, 3, 11, 6), stream_rng(7, Stream.BANDS, 3, 0).random(30)[11:17])
    # the merge: the vectorised numpy rule is merge_reference (and the simulator's torch merge)
    rng = np.random.default_rng(0)
    own = rng.standard_normal(40).astype(np.float32)
    segs = [(float(a), rng.standard_normal(40).astype(np.float32), rng.random(40) < 0.3) for a in (0.8, 0.0, 0.55)]
    for local in (0.6, 0.0):
        got = GN.merge(own, local, [(a, m, v[m]) for a, v, m in segs])
        assert np.allclose(got, G.merge_reference(own, local, segs), rtol=0, atol=1e-6)  # it sums partly in float32
        rows = torch.cat([torch.zeros(int(m.sum()), dtype=torch.int64) for _, _, m in segs])
        idx = torch.cat([torch.from_numpy(np.flatnonzero(m)) for _, _, m in segs])
        values = torch.cat([torch.from_numpy(v[m]) for _, v, m in segs])
        wt = torch.cat([torch.full((int(m.sum()),), a, dtype=torch.float64) for a, _, m in segs])
        r_, phi = G.accumulate(1, 40, rows, idx, values, wt, dtype=torch.float64)
        own64 = torch.from_numpy(own).to(torch.float64)[None]
        sim = G.merge(own64, torch.tensor([local], dtype=torch.float64), r_, phi)
        assert np.allclose(got, sim[0].numpy(), rtol=0, atol=1e-12)  # the simulator's, float64
    assert G.encode_payload is GN.encode_payload and G.band_bounds is GN.band_bounds
    # segmented gossip: one segment's weighted mean == segment_pull of the simulator
    x = torch.randn(3, 17, generator=gen)
    sizes = torch.tensor([5.0, 7.0, 9.0])
    sb = contiguous_bounds(17, 3)
    peers = np.array([[[1, 2], [2, -1], [1, 1]]])
    ref = segment_pull(x, sizes, np.array([0]), peers, sb)[0].numpy()
    trainer = NumpyPeerTrainer.__new__(NumpyPeerTrainer)
    for s_ in range(3):
        lo, hi = sb[s_], sb[s_ + 1]
        pulled = [(float(sizes[p]), x[p, lo:hi].numpy()) for p in peers[0, s_] if p >= 0]
        assert np.allclose(trainer.pull_merge(x[0, lo:hi].numpy(), 5.0, pulled), ref[lo:hi], atol=1e-6)


def _seg(
    sender: int, nonce: int, payload: bytes, encoding: str = "bitmap", rnd: int = 3, t: fm.MsgType = fm.MsgType.SEGMENT
) -> bytes:
    return fm.encode_frame(fm.Frame(t, sender, 0, rnd, encoding, 0, nonce, payload), link_key(RUN_KEY, 0, sender))


def test_peer_checks_gist_segments_and_pull_requests() -> None:
    keys = {1: link_key(RUN_KEY, 0, 1), 2: link_key(RUN_KEY, 0, 2)}
    rt = PeerRuntime(0, derive_key(RUN_KEY, 0), keys, P, SIZES, "float32", gist=True)
    rt.start_round(3, True, {1: 2})
    mask = np.zeros(P, dtype=bool)
    mask[[1, 5, 7]] = True
    vals = np.arange(P, dtype=np.float32)
    _, msg = rt.handle(_seg(1, 10, GN.encode_payload(0.75, vals, mask)), 5)
    assert msg.accuracy == 0.75 and np.array_equal(msg.mask, mask) and np.array_equal(msg.values, vals[mask])
    nan_vals = vals.copy()
    nan_vals[5] = np.nan
    cases = {
        "unexpected_type": [_model(1, 11)],  # a whole model
        "bad_payload": [
            _seg(1, 12, GN.encode_payload(0.75, vals, mask), encoding="float32"),
            _seg(1, 13, GN.encode_payload(1.5, vals, mask)),  # accuracy > 1
            _seg(1, 14, GN.encode_payload(0.75, vals, mask)[:-2]),
        ],  # truncated
        "non_finite": [
            _seg(1, 15, GN.encode_payload(float("nan"), vals, mask)),
            _seg(1, 16, GN.encode_payload(0.5, nan_vals, mask)),
        ],
    }
    for reason, frames in cases.items():
        for data in frames:
            assert rt.handle(data, 5) is None, reason
        assert rt.rejected[reason] == len(frames), (reason, dict(rt.rejected))
    assert rt.handle(_seg(1, 17, GN.encode_payload(0.5, vals, mask)), 5) is not None
    assert rt.handle(_seg(1, 18, GN.encode_payload(0.5, vals, mask)), 5) is None and rt.rejected["not_expected"] == 1
    assert [m.accuracy for m in rt.take(1)] == [0.75, 0.5]
    # segmented gossip: device 0 asks 1 for segment 1 and must answer one request of 2
    rt = PeerRuntime(0, derive_key(RUN_KEY, 0), keys, P, SIZES, "float32", segment_bounds=[0, 5, 12])
    rt.start_round(3, True, {1: 1}, 1, requests={2: 1}, outstanding={1: [(1, 5, 12)]})
    assert sorted(rt.waiting_for(1)) == [1, 2]
    request = fm.MsgType.CONTROL
    # a range that is not segment 0's
    assert rt.handle(_seg(2, 20, PULL_REQUEST.pack(0, 0, 7), encoding="none", t=request), 6) is None
    assert rt.handle(_seg(2, 21, PULL_REQUEST.pack(1, 5, 12), encoding="none"), 6) is None  # a SEGMENT is an answer
    assert rt.rejected["bad_payload"] == 2
    assert rt.handle(_seg(2, 22, PULL_REQUEST.pack(1, 5, 12), encoding="none", t=request), 6) is not None
    assert rt.handle(_seg(2, 23, PULL_REQUEST.pack(1, 5, 12), encoding="none", t=request), 6) is None
    assert rt.rejected["not_expected"] == 1 and [m.request for m in rt.requests] == [(1, 5, 12)]
    assert rt.handle(_seg(1, 23, enc.encode(vals[:3], "float32"), encoding="float32"), 7) is None  # 3 values, asked 7
    assert rt.handle(_seg(1, 24, enc.encode(vals[:7], "float16"), encoding="float16"), 7) is None  # wrong encoding
    assert rt.rejected["bad_payload"] == 4
    assert rt.handle(_seg(1, 25, enc.encode(vals[5:12], "float32"), encoding="float32"), 7) is not None
    assert rt.waiting_for(1) == [] and np.array_equal(rt.take(1)[0].values, vals[5:12])


# ---------------------------------------------------------------------------------- firmware peers


def _fw_fleet(count: int, firmware: bool = True) -> dict:
    return {
        "profile": "esp32-s3",
        "count": count,
        "link": "wifi",
        "link_overrides": {"loss": 0.0, "header_bytes": 0},
        **({"twin": "firmware"} if firmware else {}),
    }


def _match(tmp_path: Path, raw: dict, **opts):
    """Emulate ``raw`` and run the simulator; assert equal models (1e-5), accuracy, bytes."""
    _, sim_state, sim_store, sim_id = run_engine(tmp_path, raw, name="sim")
    run_dir, summary = _emulate(tmp_path, raw, **opts)
    _, rounds, _, _, _, _ = _tables(run_dir)
    sim = sim_state.params.numpy()
    models = np.load(run_dir / "emulate" / "final_models.npz")
    worst = max(float(np.abs(models[f"d{d}"] - sim[d]).max()) for d in range(sim.shape[0]))
    assert worst <= 1e-5, worst  # measured ~2e-7 (C == numpy to ~1e-7)
    assert abs(summary["final_accuracy"] - sim_state.accuracies[-1][1]) <= 0.01
    sim_rounds = sim_store.rounds(sim_id)
    assert [r["bytes_up"] for r in rounds] == [r["bytes_up"] for r in sim_rounds]
    assert summary["messages"] == sim_state.messages
    assert summary["emulate"]["devices_with_torch"] == 0 and summary["emulate"]["frames_rejected"] == {}
    return summary, sim_state


class _HostBoard:
    """Stands in for a peer's QEMU board: ``M`` and ``G`` through the host build of the same C."""

    def mix(self, weights, models):
        from tinytwin.firmware import hostlib
        from tinytwin.firmware.qemu import MergeResult

        return MergeResult(hostlib.mix(models, weights), 0, 10)

    def gist(self, own, a_local, segments):
        from tinytwin.firmware import hostlib
        from tinytwin.firmware.qemu import MergeResult

        full = []
        for a, vals, mask in segments:
            v = np.zeros(mask.size, np.float32)
            v[mask] = vals
            full.append((a, v, mask))
        return MergeResult(hostlib.gist_merge(own, a_local, full), 0, 10)


def test_a_firmware_peers_merges_are_the_numpy_peers(tmp_path: Path) -> None:
    """The firmware peer's weights for M and G give the numpy peer's merges: mixing rows and
    age-weighted pairs bit for bit (same float32 operations), means and Gist to float32 rounding."""
    from types import SimpleNamespace

    from tinytwin.emulate.peer_trainer import FirmwarePeerTrainer

    board = FirmwarePeerTrainer.__new__(FirmwarePeerTrainer)
    board.fw = SimpleNamespace(dev=_HostBoard(), fault_file=tmp_path / "fault.json")
    board.merge_insns = board.merge_commands = 0
    host = NumpyPeerTrainer.__new__(NumpyPeerTrainer)
    rng = np.random.default_rng(3)
    own = rng.standard_normal(300).astype(np.float32)
    zs = [rng.standard_normal(300).astype(np.float32) for _ in range(3)]
    got = list(zip([0.3, 0.25, 0.15], zs))
    assert np.array_equal(board.mix(own, 0.2, got, 0.1), host.mix(own, 0.2, got, 0.1))
    ages = list(zip(zs, [0, 5, 2]))
    (wb, tb), (wh, th) = board.age(own, 3, ages), host.age(own, 3, ages)
    assert np.array_equal(wb, wh) and tb == th == 5
    assert np.allclose(board.average(own, zs), host.average(own, zs), atol=1e-6)
    assert np.allclose(board.fifo_mean(np.stack(zs)), host.fifo_mean(np.stack(zs)), atol=1e-6)
    assert np.allclose(
        board.pull_merge(own[:40], 5.0, [(7.0, zs[0][:40]), (9.0, zs[1][:40])]),
        host.pull_merge(own[:40], 5.0, [(7.0, zs[0][:40]), (9.0, zs[1][:40])]),
        atol=1e-6,
    )
    masks = [rng.random(300) < 0.3 for _ in zs]
    segs = [(a, m, z[m]) for a, m, z in zip([0.9, 0.0, 0.4], masks, zs)]
    assert np.allclose(board.gist(own, 0.7, segs), host.gist(own, 0.7, segs), atol=1e-6)
    assert board.merge_commands == 1 + 3 + 1 + 1 + 1 + 1 and board.merge_insns == 80


def test_firmware_peers_match_the_simulator(tmp_path: Path) -> None:
    """DecFedAvg (2 mixing steps) on a ring of 6 firmware devices: the C client trains (T) and
    mixes (M) on QEMU; --twin firmware."""
    raw = spec_dict(
        algorithm__name="decfedavg",
        algorithm__decfedavg={"mixing_steps": 2},
        rounds=4,
        fleet={"groups": [_fw_fleet(6, firmware=False)]},
    )
    summary, _ = _match(tmp_path, raw, firmware_all=True)
    fw = summary["emulate"]["firmware"]
    assert fw["devices"] == 6 and fw["insns_per_round_median"] > 1e6 and fw["merge_insns_per_round_median"] > 0


def test_gist_on_a_mixed_fleet_of_firmware_and_numpy_peers(tmp_path: Path) -> None:
    """Three firmware devices (merging with G on the board) and three numpy devices gossip Gist
    segments with each other and compute the simulator's models."""
    raw = spec_dict(
        algorithm__name="gist",
        algorithm__gist={"sends": 3},
        rounds=3,
        fleet={"groups": [_fw_fleet(3), _fw_fleet(3, firmware=False)]},
    )
    summary, sim_state = _match(tmp_path, raw)
    assert summary["emulate"]["firmware"]["devices"] == 3
    assert summary["emulate"]["firmware"]["merge_insns_per_round_median"] > 0
    assert summary["emulate"]["gist_merges"] == int(sim_state.proto["merges"].sum()) > 0


def test_a_firmware_fault_of_a_peer_is_recorded_and_its_neighbours_go_on(tmp_path: Path) -> None:
    raw = spec_dict(algorithm__name="decfedavg", rounds=2, fleet={"groups": [_fw_fleet(4)]})
    run_dir, summary = _emulate(tmp_path, raw, round_timeout_s=60, firmware_arena_override={1: 4096})
    _, rounds, dev_rows, events, _, _ = _tables(run_dir)
    faults = [e for e in events if e["kind"] == "firmware_fault"]
    assert [(e["round"], e["device"]) for e in faults] == [(1, 1)] and "arena" in faults[0]["detail"]
    assert [r["completed"] for r in rounds] == [3, 3]
    assert {(d["round"], d["device"]): d["status"] for d in dev_rows}[(1, 1)] == "firmware_fault"
    assert summary["emulate"]["merge_timeouts"] == 0 and summary["emulate"]["peer_down_sent"] >= 2
