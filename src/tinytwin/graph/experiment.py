"""A forecasting experiment file, run: every setup on the same data, partition and seed.

Also the two references every table needs beside the setups: the persistence (last value)
baseline on the same test windows, and the graph partitions (METR-LA's and, since the graph
alone determines them, PeMS-BAY's) with halo sizes and node-feature bytes per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinytwin.errors import SpecError
from tinytwin.graph.cloudlets import (
    Partition,
    kmeans_centres,
    partition_graph,
    partition_summary,
    project_xy,
    read_centres,
)
from tinytwin.graph.emulated import run_emulated
from tinytwin.graph.fleet_costs import CloudletFleet, check_memory, fleet_costs
from tinytwin.graph.forecasting import (
    ForecastData,
    SensorGraph,
    load_forecast,
    load_graph,
    metrics_per_horizon,
    persistence_forecast,
)
from tinytwin.graph.setups import TrainConfig, run_setup
from tinytwin.graph.stgcn import StgcnConfig
from tinytwin.spec.forecast import ForecastSpec


def train_config(spec: ForecastSpec) -> TrainConfig:
    """The engine's configuration from the file; an impossible history / kernel / block mix is refused."""
    m, t = spec.model, spec.train
    model = StgcnConfig(
        spec.dataset.history,
        len(spec.dataset.horizons),
        m.blocks,
        (m.channels[0], m.channels[1], m.channels[2]),
        m.out_hidden,
        m.kt,
        m.ks,
        m.dropout,
    )
    if model.ko < 1:
        raise SpecError(
            "model.blocks",
            f"{m.blocks} ST blocks with kt {m.kt} need a history of at least {2 * m.blocks * (m.kt - 1) + 1} steps, got {spec.dataset.history}",
        )
    return TrainConfig(t.epochs, t.batch_size, t.lr, t.weight_decay, t.step_size, t.gamma, spec.seed, t.threads, model)


def data_folder(spec: ForecastSpec, base_dir: Path) -> Path | None:
    """``dataset.data_dir`` relative to the experiment file's folder (None: the environment's)."""
    d = spec.dataset.data_dir
    return None if d is None else (base_dir / Path(d).expanduser())


def build_partition(graph: SensorGraph, spec: ForecastSpec, base_dir: Path, hops: int) -> Partition:
    """Cloudlets from the file's centres CSV, else k-means of the sensor positions (``count``)."""
    xy = project_xy(graph.lat, graph.lon)
    c = spec.cloudlets
    centres = read_centres(base_dir / c.centres) if c.centres else kmeans_centres(xy, c.count, spec.seed)
    return partition_graph(graph.adj, xy, centres, 1000.0 * c.radius_km, hops)


def persistence(data: ForecastData, part: Partition) -> dict[str, dict[str, float]]:
    """The last-value baseline's metrics on the kept sensors' test windows."""
    k = part.kept
    return metrics_per_horizon(data.test.y[:, :, k], persistence_forecast(data, data.test)[:, :, k], data.horizons)


def pems_bay_partition(spec: ForecastSpec, base_dir: Path, steps: int) -> dict[str, object]:
    """PeMS-BAY's partition (k-means centres, no published ones) with the same radius and hops."""
    graph = load_graph("pems-bay-graph", data_folder(spec, base_dir))
    xy = project_xy(graph.lat, graph.lon)
    part = partition_graph(
        graph.adj,
        xy,
        kmeans_centres(xy, spec.cloudlets.count, spec.seed),
        1000.0 * spec.cloudlets.radius_km,
        spec.model.blocks,
    )
    return partition_summary(part, steps)


def run_forecast(
    spec: ForecastSpec,
    base_dir: Path,
    on_setup: Callable[[str, dict[str, object]], None] | None = None,
    emulate: bool = False,
) -> dict[str, object]:
    """Every setup of the file, the persistence baseline and both partitions, as one JSON-able dict.

    ``emulate``: the cloudlet setups run as one process per cloudlet (``graph.emulated``)."""
    cfg = train_config(spec)
    c = spec.cloudlets
    fleet = CloudletFleet.from_names(c.profile, c.link, c.server_profile)
    data = load_forecast(
        spec.dataset.name, data_folder(spec, base_dir), spec.dataset.history, tuple(spec.dataset.horizons)
    )
    part = build_partition(data.graph, spec, base_dir, spec.model.blocks)
    steps = len(data.train.x) + data.history + max(data.horizons) - 1
    check_memory(list(spec.setups), part, cfg.model, cfg.batch_size, steps, fleet)
    results: dict[str, object] = {}
    for setup in spec.setups:
        t0 = time.perf_counter()
        twin = run_emulated if emulate and setup != "centralized" else run_setup
        res = twin(data, part, setup, cfg)
        res["twin"] = "emulate" if twin is run_emulated else "simulate"
        res["wall_s"] = time.perf_counter() - t0
        res["fleet"] = fleet_costs(
            setup, part, cfg.model, len(data.train.x), steps, cfg.epochs, fleet, spec.seed, cfg.batch_size
        )
        results[setup] = res
        if on_setup is not None:
            on_setup(setup, res)
    return {
        "name": spec.name,
        "spec": spec.model_dump(),
        "windows": {"train": len(data.train.x), "val": len(data.val.x), "test": len(data.test.x)},
        "persistence": persistence(data, part),
        "setups": results,
        "partition": {
            "metr-la-week": partition_summary(part, steps),
            "pems-bay-graph": pems_bay_partition(spec, base_dir, steps),
        },
        "owned_per_cloudlet": [int(len(c.owned)) for c in part.cloudlets],
        "mean_speed_test": float(np.mean(data.test.y[:, :, part.kept])),
    }
