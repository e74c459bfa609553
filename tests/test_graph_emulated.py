"""Emulation twin of the cloudlets (issue #13): processes exchanging node features and models
give the simulator's metrics (≤ 1e-5 relative), and the feature frames carry exactly the halos."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from tinytwin.graph.cloudlets import partition_graph, project_xy, read_centres
from tinytwin.graph.emulated import FEATURE_HEADER, run_emulated
from tinytwin.graph.forecasting import Windows, load_forecast
from tinytwin.graph.setups import TrainConfig, run_setup
from tinytwin.graph.stgcn import StgcnConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("TINYTWIN_SHARED_DATA", "/work/shared/data")
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "metr-la-week.npz")), reason="no METR-LA week")


def _flat_metrics(res: dict[str, object]) -> list[float]:
    test = res["test"]
    assert isinstance(test, dict)
    return [v for h in test.values() for v in h.values()]


@pytest.mark.parametrize("setup", ["traditional", "gossip"])  # a master's mean; random pushes into FIFO buffers
def test_cloudlet_processes_match_the_simulator(setup: str) -> None:
    d = load_forecast("metr-la-week", DATA)
    cut = [Windows(w.x[:24], w.y[:24]) for w in (d.train, d.val, d.test)]
    d = dataclasses.replace(d, train=cut[0], val=cut[1], test=cut[2])
    centres = read_centres(ROOT / "examples/seed004-cloudlets.csv")
    part = partition_graph(d.graph.adj, project_xy(d.graph.lat, d.graph.lon), centres, 8000.0, 2)
    cfg = TrainConfig(
        epochs=2, lr=1e-2, batch_size=16, threads=1, model=StgcnConfig(channels=(4, 2, 4), out_hidden=8, dropout=0.2)
    )
    sim, emu = run_setup(d, part, setup, cfg), run_emulated(d, part, setup, cfg)
    np.testing.assert_allclose(_flat_metrics(emu), _flat_metrics(sim), rtol=1e-5)
    assert emu["best_epoch"] == sim["best_epoch"]
    remote = sum(len(c.remote) for c in part.cloudlets)
    frames = sum(1 for a in part.cloudlets for b in part.cloudlets if a is not b and np.isin(a.owned, b.halo).any())
    assert emu["feature_bytes_sent"] == remote * 2016 * 4 + frames * FEATURE_HEADER
