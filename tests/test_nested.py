"""Nested sub-model extraction and averaging (HeteroFL), against FedAvg and a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinytwin.algorithms.aggregators import weighted_mean
from tinytwin.algorithms.nested import RateGroup, nested_average, sub_widths, submodel_index

# 2 inputs -> 4 hidden -> 1 output: W1 (4,2) at 0..7, b1 at 8..11, W2 (1,4) at 12..15, b2 at 16.
N_IN, HIDDEN, N_OUT, P = 2, [4], 1, 17


def test_sub_widths_take_the_ceiling():
    assert sub_widths([4, 10], 0.25) == (1, 3)
    assert sub_widths([256, 128], 0.125) == (32, 16)
    assert sub_widths([3], 0.01) == (1,)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sub_widths([4], 1.5)


def test_submodel_index_matches_hand_layout():
    assert submodel_index(N_IN, HIDDEN, N_OUT, 1.0).tolist() == list(range(P))
    assert submodel_index(N_IN, HIDDEN, N_OUT, 0.5).tolist() == [0, 1, 2, 3, 8, 9, 12, 13, 16]
    assert submodel_index(N_IN, HIDDEN, N_OUT, 0.25).tolist() == [0, 1, 8, 12, 16]


def test_extracted_submodel_is_the_first_units_of_each_hidden_layer():
    g = np.arange(784 * 8 + 8 + 8 * 4 + 4 + 4 * 10 + 10, dtype=np.float32)
    idx = submodel_index(784, [8, 4], 10, 0.5)
    sub = g[idx]
    w1 = g[: 8 * 784].reshape(8, 784)
    assert np.array_equal(sub[: 4 * 784].reshape(4, 784), w1[:4])
    off_w2 = 8 * 784 + 8
    w2 = g[off_w2 : off_w2 + 32].reshape(4, 8)
    assert np.array_equal(sub[4 * 784 + 4 : 4 * 784 + 4 + 8].reshape(2, 4), w2[:2, :4])
    assert sub.size == 4 * 784 + 4 + 2 * 4 + 2 + 10 * 2 + 10


def test_nested_average_equals_a_hand_computation():
    groups = [
        RateGroup(submodel_index(N_IN, HIDDEN, N_OUT, 1.0), torch.full((1, 17), 1.0), torch.tensor([1.0])),
        RateGroup(submodel_index(N_IN, HIDDEN, N_OUT, 0.5), torch.full((1, 9), 4.0), torch.tensor([2.0])),
        RateGroup(submodel_index(N_IN, HIDDEN, N_OUT, 0.25), torch.full((1, 5), 8.0), torch.tensor([1.0])),
    ]
    out = nested_average(torch.zeros(P), groups)
    expected = torch.ones(P)
    expected[[0, 1, 8, 12, 16]] = (1 * 1 + 2 * 4 + 1 * 8) / 4  # held by all three
    expected[[2, 3, 9, 13]] = (1 * 1 + 2 * 4) / 3  # held by rates 1 and 0.5
    assert torch.equal(out, expected)


def test_parameters_held_by_no_device_keep_their_value():
    g = torch.arange(P, dtype=torch.float32)
    groups = [RateGroup(submodel_index(N_IN, HIDDEN, N_OUT, 0.25), torch.tensor([[1.0] * 5, [3.0] * 5]), [1.0, 1.0])]
    out = nested_average(g, groups)
    held = [0, 1, 8, 12, 16]
    assert torch.equal(out[held], torch.full((5,), 2.0))
    rest = [i for i in range(P) if i not in held]
    assert torch.equal(out[rest], g[rest])
    assert torch.equal(g, torch.arange(P, dtype=torch.float32))  # input untouched


def test_every_rate_one_is_fedavg_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    updates = torch.randn(7, 784 * 32 + 32 + 32 * 10 + 10, generator=gen)
    weights = torch.randint(10, 600, (7,), generator=gen).float()
    idx = submodel_index(784, [32], 10, 1.0)
    out = nested_average(torch.zeros(updates.shape[1]), [RateGroup(idx, updates, weights)])
    assert torch.equal(out, weighted_mean(updates, weights))


@pytest.mark.parametrize(
    "name,options",
    [
        ("mlp", {"hidden": (12, 6)}),
        ("lenet5", {"channels": (6, 8), "fc": (16, 12)}),
        ("dscnn", {"channels": (4, 8, 6)}),
    ],
)
@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_a_width_family_member_is_the_full_model_with_the_other_units_removed(name, options, rate):
    """With every parameter outside the member's index zeroed, the full network computes
    exactly what the member computes on its slice: removed units output relu(0) = 0 and
    nothing reads them. This holds only if the index names the right weights of every conv,
    depthwise, pooling-fed and flatten-fed layer."""
    from torch.func import functional_call

    from tinytwin.fleet.model_sizes import sub_model
    from tinytwin.models.params import ParamLayout
    from tinytwin.models.zoo import make_model

    full = make_model(name, (1, 8, 8), 10, **options)
    member = sub_model(full, options, rate)
    assert member.model.num_params < full.num_params
    full_module, sub_module = full.build(0), member.model.build(0)
    full_layout, sub_layout = ParamLayout.of(full_module), ParamLayout.of(sub_module)
    g = torch.randn(full.num_params, generator=torch.Generator().manual_seed(1))
    masked = torch.zeros_like(g)
    idx = torch.from_numpy(member.index)
    masked[idx] = g[idx]
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out_full = functional_call(full_module, full_layout.unflatten(masked), (x,))
        out_sub = functional_call(sub_module, sub_layout.unflatten(g[idx]), (x,))
    assert torch.allclose(out_full, out_sub, atol=1e-5)
    assert bool(out_sub.abs().sum() > 0)
    assert np.unique(member.index).size == member.index.size


def test_a_shallower_member_shares_its_hidden_layers_and_keeps_its_head_after_the_global_model():
    """Depth 1 of a 16-12-6-3 MLP: its first layer is the global first layer's leading block;
    its classifier (3 x hidden_1) lives in the head block after the P global parameters."""
    from tinytwin.fleet.model_sizes import Head, sub_model
    from tinytwin.models.zoo import make_model

    full = make_model("mlp", (1, 4, 4), 3, hidden=(12, 6))
    p = full.num_params
    head = Head(depth=1, offset=p, n_in=12, n_out=3)
    deep_half = sub_model(full, {"hidden": (12, 6)}, 0.5)
    shallow = sub_model(full, {"hidden": (12, 6)}, 1.0, depth=1, head=head)
    shallow_half = sub_model(full, {"hidden": (12, 6)}, 0.5, depth=1, head=head)
    assert shallow.model.num_params == 16 * 12 + 12 + 12 * 3 + 3
    first_layer = 16 * 12 + 12
    assert np.array_equal(shallow.index[:first_layer], np.arange(first_layer))  # the global first layer
    assert np.array_equal(shallow.index[first_layer:], np.arange(p, p + head.size))  # its whole head
    assert np.array_equal(shallow_half.index[: 16 * 6 + 6], deep_half.index[: 16 * 6 + 6])
    head_w = shallow_half.index[16 * 6 + 6 : -3]
    assert np.array_equal(head_w, p + (np.arange(3)[:, None] * 12 + np.arange(6)[None, :]).reshape(-1))
    assert np.array_equal(shallow_half.index[-3:], p + 36 + np.arange(3))
