"""The four setups on the METR-LA week (issue #13): one cloudlet is centralized training, a short
centralized run beats persistence at 15 min, and the overhead accounting follows the partition."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from tinytwin.graph.cloudlets import partition_graph, project_xy, read_centres
from tinytwin.graph.forecasting import ForecastData, Windows, load_forecast, metrics_per_horizon, persistence_forecast
from tinytwin.graph.setups import TrainConfig, run_setup
from tinytwin.graph.stgcn import StgcnConfig, param_count, train_flops

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("TINYTWIN_SHARED_DATA", "/work/shared/data")
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "metr-la-week.npz")), reason="no METR-LA week")
TINY = StgcnConfig(channels=(4, 2, 4), out_hidden=8, dropout=0.0)


@pytest.fixture(scope="module")
def data() -> ForecastData:
    return load_forecast("metr-la-week", DATA)


def _few(d: ForecastData, n: int = 64) -> ForecastData:
    cut = [Windows(w.x[:n], w.y[:n]) for w in (d.train, d.val, d.test)]
    return dataclasses.replace(d, train=cut[0], val=cut[1], test=cut[2])


def _xy(d: ForecastData) -> np.ndarray:
    return project_xy(d.graph.lat, d.graph.lon)


def test_one_cloudlet_over_every_sensor_is_centralized(data: ForecastData) -> None:
    d = _few(data)
    part = partition_graph(d.graph.adj, _xy(d), np.zeros((1, 2)), radius_m=1e7, hops=2)
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=16, model=TINY)
    central, fl = run_setup(d, part, "centralized", cfg), run_setup(d, part, "traditional", cfg)
    assert fl["test"] == central["test"]
    assert [c["val"] for c in fl["curve"]] == [c["val"] for c in central["curve"]]  # type: ignore[attr-defined]
    seven = partition_graph(d.graph.adj, _xy(d), read_centres(ROOT / "examples/seed004-cloudlets.csv"), 8000.0, 2)
    assert run_setup(d, seven, "traditional", cfg)["test"] != central["test"]  # the partition matters


def test_overheads_follow_the_partition(data: ForecastData) -> None:
    d = _few(data, 32)
    part = partition_graph(d.graph.adj, _xy(d), read_centres(ROOT / "examples/seed004-cloudlets.csv"), 8000.0, 2)
    cfg = TrainConfig(epochs=1, model=TINY)
    res = {s: run_setup(d, part, s, cfg)["costs"] for s in ("centralized", "traditional", "serverfree", "gossip")}
    model_bytes = param_count(TINY) * 4
    degree = np.mean([len(n) for n in part.neighbours])
    assert res["traditional"]["model_bytes_per_epoch_per_cloudlet"] == model_bytes  # type: ignore[index]
    assert res["serverfree"]["model_bytes_per_epoch_per_cloudlet"] == pytest.approx(degree * model_bytes)  # type: ignore[index]
    halos = sum(len(c.halo) for c in part.cloudlets)
    assert res["gossip"]["feature_bytes_per_epoch_total"] == halos * (32 + 12 + 12 - 1) * 4  # type: ignore[index]
    flops = res["traditional"]["train_flops_per_epoch"]  # type: ignore[index]
    assert flops == sum(train_flops(TINY, len(c.halo), 32) for c in part.cloudlets)
    assert flops > res["centralized"]["train_flops_per_epoch"]  # type: ignore[index]  # overlapping halos


def test_short_centralized_run_beats_persistence_at_15_min(data: ForecastData) -> None:
    part = partition_graph(data.graph.adj, _xy(data), np.zeros((1, 2)), radius_m=1e7, hops=2)
    cfg = TrainConfig(epochs=3, lr=5e-3, model=StgcnConfig(channels=(8, 4, 8), out_hidden=16, dropout=0.0))
    got = run_setup(data, part, "centralized", cfg)["test"]["15min"]["mae"]  # type: ignore[index]
    base = metrics_per_horizon(data.test.y, persistence_forecast(data, data.test), data.horizons)["15min"]["mae"]
    assert got < base - 0.05, f"ST-GCN 15-min MAE {got:.3f} vs persistence {base:.3f}"
