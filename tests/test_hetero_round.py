"""A nested round in the simulator: all rates 1.0 is the FedAvg round; mixed rates train each shape."""

from __future__ import annotations

import numpy as np
import torch

from tinytwin.algorithms.aggregators import weighted_mean
from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.algorithms.nested import submodel_index
from tinytwin.engines.hetero_round import hetero_round, shape_trainers
from tinytwin.fleet.model_sizes import sub_model
from tinytwin.models.zoo import make_model

HIDDEN = [16, 8]
CFG = LocalTraining(epochs=1, batch_size=4, lr=0.1)


def trainers_for(rates, model=None, options=None):
    """One batched trainer per distinct rate of ``rates`` (default: the 16-16-8-2 MLP)."""
    if model is None:
        model, options = make_model("mlp", (1, 4, 4), 2, hidden=HIDDEN), {"hidden": HIDDEN}
    members = [sub_model(model, options, float(r)) for r in sorted(set(np.asarray(rates).tolist()), reverse=True)]
    sizes = {m.key: m for m in members}
    return shape_trainers(sizes, *planted()[:2], CFG, seed=1)


def keys_of(rates):
    return np.array([f"{r:g}" for r in rates])


def planted():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(120, 1, 4, 4, generator=gen)
    y = (x.reshape(120, -1).sum(1) > 8).long()
    parts = [np.arange(i * 20, (i + 1) * 20 - i) for i in range(6)]
    return x, y, parts


def test_all_full_rate_round_is_the_fedavg_round():
    x, y, parts = planted()
    ids = np.arange(6)
    trainers = trainers_for([1.0] * 6)
    st = trainers["1"]
    g = st.trainer.layout.flatten(st.trainer.module)
    out, losses = hetero_round(g, trainers, 0, ids, keys_of(np.ones(6)), parts)
    local = st.trainer.train(g, 0, ids, parts)
    weights = torch.tensor([len(p) for p in parts], dtype=g.dtype)
    assert torch.equal(out, weighted_mean(local.params - g, weights))
    assert np.array_equal(losses, local.train_loss)
    assert bool(out.abs().sum() > 0)


def test_mixed_rates_train_each_shape_and_keep_unheld_parameters():
    x, y, parts = planted()
    rates = np.array([0.5, 0.5, 0.25, 0.25, 0.5, 0.25])
    trainers = trainers_for(rates)
    assert list(trainers) == ["0.5", "0.25"]
    full = submodel_index(16, HIDDEN, 2, 1.0).size
    g = torch.randn(full, generator=torch.Generator().manual_seed(2))
    delta, losses = hetero_round(g, trainers, 0, np.arange(6), keys_of(rates), parts)
    held = np.zeros(full, dtype=bool)
    held[submodel_index(16, HIDDEN, 2, 0.5)] = True
    assert bool((delta[torch.from_numpy(~held)] == 0).all())  # rate-1 units: nobody held them
    assert bool((delta[torch.from_numpy(held)] != 0).any())
    assert np.isfinite(losses).all()


def test_int8_uplink_is_decoded_per_sub_model():
    """Each size's update goes through the uplink encoding of its own tensors (one scale per
    tensor of the sub-model): the merged delta equals the hand merge of the decoded rows."""
    from tinytwin.algorithms.nested import RateGroup, nested_average
    from tinytwin.wire.roundtrip import roundtrip_torch

    x, y, parts = planted()
    rates = np.array([1.0, 0.5, 0.5, 1.0, 0.5, 1.0])
    trainers = trainers_for(rates)
    g = trainers["1"].trainer.layout.flatten(trainers["1"].trainer.module)
    delta, _ = hetero_round(g, trainers, 3, np.arange(6), keys_of(rates), parts, encoding="int8")
    groups = []
    for rate, st in trainers.items():
        pos = np.flatnonzero(keys_of(rates) == rate)
        start = g[torch.from_numpy(st.index)]
        trained = st.trainer.train(start, 3, pos, [parts[i] for i in pos]).params
        rows = roundtrip_torch(trained - start, "int8", tensor_sizes=st.tensor_sizes)
        groups.append(RateGroup(st.index, rows, torch.tensor([len(parts[i]) for i in pos], dtype=g.dtype)))
    assert torch.equal(delta, nested_average(torch.zeros_like(g), groups))
    exact, _ = hetero_round(g, trainers, 3, np.arange(6), keys_of(rates), parts)
    assert not torch.equal(delta, exact)  # the encoding really was applied


def test_the_scaler_multiplies_a_members_hidden_outputs_while_it_trains():
    """HeteroFL's scaler: a rate-0.5 member trains through x 2 layers after each hidden linear
    layer (not after the classifier), so its trained update differs from the plain member's."""
    from dataclasses import replace

    from tinytwin.models.families import with_scaler

    x, y, parts = planted()
    rates = np.array([0.5] * 6)
    plain = trainers_for(rates)
    full = make_model("mlp", (1, 4, 4), 2, hidden=HIDDEN)
    member = sub_model(full, {"hidden": HIDDEN}, 0.5)
    scaled = replace(member, train_model=with_scaler(member.model, 0.5))
    assert [layer.factor for layer in scaled.trained.layers if layer.kind == "scale"] == [2.0, 2.0]
    assert scaled.trained.num_params == member.model.num_params
    trainers = shape_trainers({scaled.key: scaled}, x, y, CFG, seed=1)
    g = torch.randn(full.num_params, generator=torch.Generator().manual_seed(3)) * 0.3
    with_scale, _ = hetero_round(g, trainers, 0, np.arange(6), keys_of(rates), parts)
    without, _ = hetero_round(g, plain, 0, np.arange(6), keys_of(rates), parts)
    assert not torch.allclose(with_scale, without)
    assert "Scale" in str(trainers["0.5"].trainer.module) and "Scale" not in str(plain["0.5"].trainer.module)
