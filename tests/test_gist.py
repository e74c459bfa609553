"""Gist: importance bands, band choice, the segment payload and the success-weighted merge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dfl_util import engine, run_engine, spec_dict
from tinytwin.algorithms import gist as G
from tinytwin.store.dfl import round_metrics
from tinytwin.wire.frame import Frame, MsgType, decode_frame, encode_frame, frame_size


def test_payload_encodes_and_decodes_exactly_and_its_size_is_counted():
    rng = np.random.default_rng(1)
    for n, nnz in [(1, 1), (13, 5), (64, 0), (1210, 242), (25450, 5090)]:
        values = rng.standard_normal(n).astype(np.float32)
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, nnz, replace=False)] = True
        acc = np.float32(rng.random())
        payload = G.encode_payload(float(acc), values, mask)
        assert len(payload) == G.payload_size(n, nnz) == 4 + (n + 7) // 8 + 4 * nnz
        got_acc, got_values, got_mask = G.decode_payload(payload, n)
        assert got_acc == float(acc)
        assert np.array_equal(got_mask, mask)
        assert np.array_equal(got_values[mask], values[mask]) and not got_values[~mask].any()
        key = b"k" * 32
        frame = Frame(MsgType.SEGMENT, 3, 4, 7, "bitmap", 1, 99, payload)
        wire = encode_frame(frame, key)
        assert len(wire) == frame_size(len(payload))  # the bytes the simulator counts
        assert decode_frame(wire, lambda s: key).payload == payload


def test_merge_equals_the_formula_on_a_hand_made_example():
    # receiver w = [1, 2, 3, 4, 5], a_local = 0.5; three senders with overlapping bitmaps
    own = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    s1 = (0.8, np.array([10.0, 20.0, 0, 0, 0]), np.array([1, 1, 0, 0, 0], dtype=bool))
    s2 = (0.4, np.array([0, 6.0, 7.0, 0, 0]), np.array([0, 1, 1, 0, 0], dtype=bool))
    s3 = (0.2, np.array([5.0, 0, 9.0, 0, 0]), np.array([1, 0, 1, 0, 0], dtype=bool))
    expected = np.array(
        [
            (0.8 * 10 + 0.2 * 5 + 0.5 * 1) / (0.8 + 0.2 + 0.5),  # j=0: senders 1 and 3
            (0.8 * 20 + 0.4 * 6 + 0.5 * 2) / (0.8 + 0.4 + 0.5),  # j=1: senders 1 and 2
            (0.4 * 7 + 0.2 * 9 + 0.5 * 3) / (0.4 + 0.2 + 0.5),  # j=2: senders 2 and 3
            4.0,
            5.0,  # nobody sent: unchanged
        ]
    )
    vanilla = np.array([(10 + 5 + 1) / 3, (20 + 6 + 2) / 3, (7 + 9 + 3) / 3, 4.0, 5.0])
    segs = [s1, s2, s3]
    assert np.allclose(G.merge_reference(own, 0.5, segs), expected)
    assert np.allclose(G.merge_reference(own, 1.0, [(1.0, v, m) for _, v, m in segs]), vanilla)
    # the vectorised path the engine uses, through the wire format
    rows, idx, vals, wts = [], [], [], []
    for a, v, m in segs:
        acc, values, mask = G.decode_payload(G.encode_payload(a, v, m), 5)
        i = torch.from_numpy(np.flatnonzero(mask))
        rows.append(torch.zeros(i.numel(), dtype=torch.int64))
        idx.append(i)
        vals.append(torch.from_numpy(values)[i].to(torch.float64))
        wts.append(torch.full((i.numel(),), acc, dtype=torch.float64))
    r, phi = G.accumulate(1, 5, torch.cat(rows), torch.cat(idx), torch.cat(vals), torch.cat(wts), dtype=torch.float64)
    got = G.merge(torch.from_numpy(own)[None], torch.tensor([0.5], dtype=torch.float64), r, phi)[0]
    assert np.allclose(got.numpy(), expected, atol=1e-6)  # float32 accuracies on the wire
    ones = torch.cat(wts).clone().fill_(1.0)
    r1, phi1 = G.accumulate(1, 5, torch.cat(rows), torch.cat(idx), torch.cat(vals), ones, dtype=torch.float64)
    assert np.allclose(
        G.merge(torch.from_numpy(own)[None], torch.ones(1, dtype=torch.float64), r1, phi1)[0].numpy(), vanilla
    )
    # all weights zero: the local value is kept (the authors' fallback)
    z = G.merge(torch.from_numpy(own)[None], torch.zeros(1, dtype=torch.float64), r * 0, phi * 0)[0]
    assert np.array_equal(z.numpy(), own)


def test_bands_are_equal_count_magnitude_bands_covering_every_parameter():
    w = torch.tensor([[0.5, -3.0, 0.1, 2.0, -0.2, 1.0, 0.0, -4.0, 0.3, 0.7]])
    order = G.band_order(w)
    bounds = G.band_bounds(10, 3)
    assert bounds.tolist() == [0, 4, 7, 10]
    bands = [G.segment(order[0], bounds, b).tolist() for b in range(3)]
    assert sorted(sum(bands, [])) == list(range(10))  # a partition of all parameters
    assert bands == [[2, 4, 6, 8], [0, 5, 9], [1, 3, 7]]  # |w| low .. high
    imp = G.band_importance(w, order, bounds)[0]
    assert torch.allclose(imp, torch.tensor([(0.1 + 0.2 + 0 + 0.3) / 4, (0.5 + 1.0 + 0.7) / 3, (3 + 2 + 4) / 3]))


def test_band_choice_prefers_important_bands_but_sends_every_band():
    imp = torch.tensor([[0.1, 0.3, 0.6]])
    p = G.selection_probabilities(imp, "proportional", math.e)[0]
    assert torch.allclose(p, torch.softmax(torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), 0))  # p_i = s_i / sum
    assert p[2] > p[1] > p[0] > 0.2
    soft = G.selection_probabilities(imp * 10, "softmax")[0]
    assert torch.allclose(soft, torch.softmax(torch.tensor([1.0, 3.0, 6.0], dtype=torch.float64), 0))
    assert torch.allclose(G.selection_probabilities(imp, "uniform")[0], torch.full((3,), 1 / 3, dtype=torch.float64))
    dropped = G.selection_probabilities(imp, "proportional", drop_lowest=True)[0]
    assert dropped[0] == 0 and torch.isclose(dropped.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_gist_engine_sends_importance_segments_and_merges_on_the_threshold(tmp_path):
    raw = spec_dict(
        topology={"kind": "full"},
        algorithm={"name": "gist", "batch_size": 32, "gist": {"segments": 4, "sends": 3, "min_received": 3}},
    )
    sim, st = engine(tmp_path, raw)
    st.params = torch.randn_like(st.params)
    ids = np.arange(sim.n)
    ctx = sim._ctx(1, 1, np.ones(sim.n, dtype=bool), 0.0)
    before = st.params.clone()
    msgs = sim.proto.after_train(st, ids, ctx)
    p = sim.num_params
    assert len(msgs) == 3 * sim.n and (msgs.src != msgs.dst).all()
    for m in range(len(msgs)):
        idx = msgs.data["idx"][m]
        assert idx.numel() in (p // 4, p // 4 + 1)
        assert torch.equal(msgs.data["vals"][m], before[msgs.src[m], idx])
        assert msgs.payload[m] == G.payload_size(p, idx.numel())
        assert float(msgs.data["acc"][m]) == float(st.proto["acc"][msgs.src[m]])
    sim.proto.deliver(st, msgs)
    counts = np.bincount(msgs.dst, minlength=sim.n)
    for d in range(sim.n):
        buffered = len(st.proto["buffer"][d])
        if counts[d] >= 3:
            assert buffered == 0 and not torch.equal(st.params[d], before[d])  # merged and cleared
        else:
            assert buffered == counts[d] and torch.equal(st.params[d], before[d])  # still waiting


@pytest.mark.parametrize(
    "variant",
    [
        {"merge": "vanilla"},
        {"segmentation": "random", "selection": "uniform", "merge": "vanilla"},
    ],
)
def test_gist_variants_run(tmp_path, variant):
    raw = spec_dict(
        rounds=3,
        algorithm={
            "name": "gist",
            "batch_size": 16,
            "lr": 0.3,
            "local_epochs": 2,
            "gist": {"sends": 4, "min_received": 2, **variant},
        },
    )
    sim, st, store, run_id = run_engine(tmp_path, raw)
    rm = round_metrics(store, run_id)
    assert rm[-1]["acc_mean"] > rm[0]["acc_mean"] and rm[-1]["acc_mean"] > 0.4
