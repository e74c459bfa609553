"""The cloudlet merge rules (issue #13, reference §6) on constant-filled models: gossip's FIFO of
two replaces the local model, gossip-merge keeps it in the mean, server-free averages neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinytwin.graph.cloudlets import partition_graph
from tinytwin.graph.forecasting import ForecastData, SensorGraph, Windows
from tinytwin.graph.setups import Site, TrainConfig, aggregate, before_epoch, make_sites
from tinytwin.graph.stgcn import StgcnConfig

CFG = TrainConfig(model=StgcnConfig(channels=(2, 2, 2), out_hidden=2, dropout=0.0))


def _sites(setup: str) -> tuple[list[Site], object]:
    xy = np.array([[x * 1000.0, 0.0] for x in range(6)])
    adj = np.eye(6) + np.diag(np.full(5, 0.5), 1)
    graph = SensorGraph(adj, np.zeros(6), np.zeros(6), np.array([str(i) for i in range(6)]))
    w = Windows(np.zeros((1, 12, 6), np.float32), np.zeros((1, 3, 6), np.float32))
    data = ForecastData(graph, w, w, w, np.zeros(6), np.ones(6), 12, (3, 6, 12))
    part = partition_graph(adj, xy, np.array([[500.0, 0], [2500.0, 0], [4500.0, 0]]), 2100.0, 2)
    sites = make_sites(data, part, setup, CFG)
    for i, s in enumerate(sites):
        for p in s.model.parameters():
            p.data.fill_(float(i + 1))
    return sites, part


def _value(s: Site) -> float:
    return float(next(iter(s.model.parameters())).detach().flatten()[0])


def test_gossip_replaces_the_model_with_the_mean_of_the_last_two_received() -> None:
    sites, part = _sites("gossip")
    init = float(next(iter(sites[0].buffer[0].values())).flatten()[0])
    aggregate("gossip", sites, part, np.random.default_rng(7))  # type: ignore[arg-type]
    replay = np.random.default_rng(7)
    received: dict[int, list[float]] = {0: [init, init], 1: [init, init], 2: [init, init]}
    for j in range(3):
        received[int(replay.choice([i for i in range(3) if i != j]))].append(float(j + 1))
    before_epoch("gossip", sites)
    for j, s in enumerate(sites):
        assert _value(s) == pytest.approx(np.mean(received[j][-2:]), rel=1e-6)  # own value gone unless it came back


def test_gossip_merge_keeps_the_own_model_in_the_mean() -> None:
    sites, part = _sites("gossip-merge")
    init = float(next(iter(sites[0].buffer[0].values())).flatten()[0])
    before_epoch("gossip-merge", sites)
    assert [_value(s) for s in sites] == pytest.approx([(i + 1 + 2 * init) / 3 for i in range(3)], rel=1e-6)


def test_serverfree_averages_with_neighbour_cloudlets_only() -> None:
    sites, part = _sites("serverfree")
    assert part.neighbours == ((1,), (0, 2), (1,))  # type: ignore[attr-defined]
    aggregate("serverfree", sites, part, np.random.default_rng(0))  # type: ignore[arg-type]
    assert [_value(s) for s in sites] == [1.5, 2.0, 2.5]
    with torch.no_grad():
        sites, part = _sites("traditional")
        aggregate("traditional", sites, part, np.random.default_rng(0))  # type: ignore[arg-type]
        assert [_value(s) for s in sites] == [2.0, 2.0, 2.0]
