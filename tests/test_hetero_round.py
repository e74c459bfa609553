"""A nested round in the simulator: all rates 1.0 is the FedAvg round; mixed rates train each shape."""

from __future__ import annotations

import numpy as np
import torch

from tinytwin.algorithms.aggregators import weighted_mean
from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.algorithms.nested import submodel_index
from tinytwin.engines.hetero_round import hetero_round, shape_trainers

HIDDEN = [16, 8]
CFG = LocalTraining(epochs=1, batch_size=4, lr=0.1)


def planted():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(120, 1, 4, 4, generator=gen)
    y = (x.reshape(120, -1).sum(1) > 8).long()
    parts = [np.arange(i * 20, (i + 1) * 20 - i) for i in range(6)]
    return x, y, parts


def test_all_full_rate_round_is_the_fedavg_round():
    x, y, parts = planted()
    ids = np.arange(6)
    trainers = shape_trainers((1, 4, 4), 2, HIDDEN, [1.0] * 6, x, y, CFG, seed=1)
    st = trainers[1.0]
    g = st.trainer.layout.flatten(st.trainer.module)
    out = hetero_round(g, trainers, 0, ids, np.ones(6), parts)
    local = st.trainer.train(g, 0, ids, parts).params
    assert torch.equal(out, weighted_mean(local, torch.tensor([len(p) for p in parts], dtype=g.dtype)))
    assert not torch.equal(out, g)


def test_mixed_rates_train_each_shape_and_keep_unheld_parameters():
    x, y, parts = planted()
    rates = np.array([0.5, 0.5, 0.25, 0.25, 0.5, 0.25])
    trainers = shape_trainers((1, 4, 4), 2, HIDDEN, rates, x, y, CFG, seed=1)
    assert sorted(trainers) == [0.25, 0.5]
    full = submodel_index(16, HIDDEN, 2, 1.0).size
    g = torch.randn(full, generator=torch.Generator().manual_seed(2))
    out = hetero_round(g, trainers, 0, np.arange(6), rates, parts)
    held = np.zeros(full, dtype=bool)
    held[submodel_index(16, HIDDEN, 2, 0.5)] = True
    assert torch.equal(out[torch.from_numpy(~held)], g[torch.from_numpy(~held)])  # rate-1 units: nobody held them
    assert not torch.equal(out[torch.from_numpy(held)], g[torch.from_numpy(held)])
