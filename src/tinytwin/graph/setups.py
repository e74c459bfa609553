"""The four training setups of seed 004 §3 on a sensor graph: centralized, traditional FL,
server-free FL and gossip learning (plus gossip that merges with its own model).

A standalone engine beside the classification simulator: its work unit is a cloudlet's
subgraph (halo nodes, a graph operator, a loss over owned nodes only), which the batched
flat-vector engine of ``engines/`` does not model. One "round" is one local epoch (reference
§6). Every cloudlet keeps its Adam state and StepLR schedule across rounds; an aggregation
overwrites only the weights. Cloudlets train one after another: each step is already a few
large GEMMs, and a vmapped step over stacked weights and padded halos measured 2-3.5x slower
(benchmarks/bench_cloudlet_batching.py). The test metrics are those of the epoch with the best validation MAE at the first
horizon; each sensor is predicted by the model of the cloudlet that owns it.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tinytwin.engines.threads import intra_op_threads, threads_for
from tinytwin.graph import merges
from tinytwin.graph.cloudlets import Partition, node_feature_bytes
from tinytwin.graph.forecasting import ForecastData, Windows, forecast_metrics, metrics_per_horizon
from tinytwin.graph.stgcn import Stgcn, StgcnConfig, forward_flops, param_count, scaled_laplacian, train_flops

SETUPS = ("centralized", "traditional", "serverfree", "gossip", "gossip-merge")
BYTES_PER_VALUE = 4


@dataclass(frozen=True)
class TrainConfig:
    """Seed 004 §3.4: Adam lr 1e-4, weight decay 1e-5, StepLR(5, 0.7), batch 32, 40 epochs, MAE loss."""

    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-5
    step_size: int = 5
    gamma: float = 0.7
    seed: int = 0
    threads: int | None = None  # intra-op threads; None: engines.threads' rule (one on a busy machine)
    model: StgcnConfig = field(default_factory=StgcnConfig)


@dataclass
class Site:
    """One trainer: the whole kept graph (centralized) or one cloudlet's k-hop halo."""

    nodes: np.ndarray  # graph indices of the subgraph (halo), sorted
    own: np.ndarray  # positions in ``nodes`` of the sensors this site owns (loss, metrics)
    gso: torch.Tensor
    model: Stgcn
    opt: torch.optim.Adam
    sched: torch.optim.lr_scheduler.StepLR
    rng: np.random.Generator
    torch_seed: int  # dropout masks: seeded per site and epoch, so no site's draws depend on another's
    buffer: deque[dict[str, torch.Tensor]] = field(default_factory=lambda: deque(maxlen=2))


def new_site(
    nodes: np.ndarray,
    owned: np.ndarray,
    adj: np.ndarray,
    base: Stgcn,
    cfg: TrainConfig,
    i: int,
    gso: np.ndarray | None = None,
) -> Site:
    """A trainer on ``adj``'s subgraph over ``nodes``; ``gso``: its scaled Laplacian, if already computed."""
    model = copy.deepcopy(base)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    lap = scaled_laplacian(adj[np.ix_(nodes, nodes)]) if gso is None else gso
    gso_t = torch.from_numpy(lap).float()
    own = np.searchsorted(nodes, owned)
    site = Site(
        nodes, own, gso_t, model, opt, sched, np.random.default_rng([cfg.seed, i]), 1_000_003 * cfg.seed + 1009 * i
    )
    site.buffer.extend([copy.deepcopy(base.state_dict()), copy.deepcopy(base.state_dict())])
    return site


def site_sizes(part: Partition, setup: str) -> list[int]:
    """Node count of each trainer's subgraph: every kept sensor (centralized) or each cloudlet's halo."""
    return [len(part.kept)] if setup == "centralized" else [len(c.halo) for c in part.cloudlets]


def make_sites(data: ForecastData, part: Partition, setup: str, cfg: TrainConfig) -> list[Site]:
    """Same initial model everywhere (seeded); centralized is one site over every kept sensor."""
    if setup not in SETUPS:
        raise ValueError(f"unknown setup {setup!r}; use one of {SETUPS}")
    torch.manual_seed(cfg.seed)
    base = Stgcn(cfg.model)
    adj = data.graph.adj
    if setup == "centralized":
        return [new_site(part.kept, part.kept, adj, base, cfg, 0)]
    return [new_site(c.halo, c.owned, adj, base, cfg, c.index) for c in part.cloudlets]


def train_epoch(site: Site, x: torch.Tensor, yz: torch.Tensor, batch_size: int) -> float:
    """One pass over the training windows in a site-seeded order; MAE on owned nodes (z-space)."""
    site.model.train()
    torch.manual_seed(site.torch_seed + site.sched.last_epoch)
    order = site.rng.permutation(len(x))
    nodes, own = torch.from_numpy(site.nodes), torch.from_numpy(site.own)
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = torch.from_numpy(order[start : start + batch_size])
        xb = x[idx][:, :, nodes]
        yb = yz[idx][:, :, nodes][:, :, own]
        loss = torch.nn.functional.l1_loss(site.model(xb, site.gso)[:, :, own], yb)
        site.opt.zero_grad()
        loss.backward()
        site.opt.step()
        total += float(loss.detach()) * len(idx)
    site.sched.step()
    return total / len(order)


@torch.no_grad()
def predict(sites: list[Site], data: ForecastData, part: Windows) -> np.ndarray:
    """(samples, horizons, graph nodes) speeds, each node from its owner's model (NaN if unowned)."""
    out = np.full(part.y.shape, np.nan)
    x = torch.from_numpy(part.x)
    for s in sites:
        s.model.eval()
        owned = s.nodes[s.own]
        z = np.concatenate(
            [s.model(x[i : i + 256][:, :, s.nodes], s.gso)[:, :, s.own].numpy() for i in range(0, len(x), 256)]
        )
        out[:, :, owned] = z * data.std[owned] + data.mean[owned]
    return out


def _load(sites: list[Site], states: list[merges.State] | None) -> None:
    for s, st in zip(sites, states or [], strict=False):
        s.model.load_state_dict(st)


def aggregate(setup: str, sites: list[Site], part: Partition, rng: np.random.Generator) -> None:
    """After a local epoch: the master's mean, the neighbourhood mean, or one gossip push each."""
    states = [s.model.state_dict() for s in sites]
    _load(sites, merges.after_epoch(setup, states, part.neighbours, [s.buffer for s in sites], rng))


def before_epoch(setup: str, sites: list[Site]) -> None:
    """Gossip: the local model becomes the mean of the FIFO buffer (or of it and itself, merge variant)."""
    _load(sites, merges.before_epoch(setup, [s.model.state_dict() for s in sites], [s.buffer for s in sites]))


def costs(setup: str, sizes: list[int], part: Partition, data: ForecastData, cfg: TrainConfig) -> dict[str, float]:
    """Per-epoch overheads (Table 6) from the trainers' subgraph sizes: model bytes sent per cloudlet,
    node-feature bytes, training and aggregation FLOPs (no training needed to count them)."""
    p = param_count(cfg.model)
    steps = len(data.train.x) + data.history + max(data.horizons) - 1
    n = len(sizes)
    sends = {"traditional": 1.0, "serverfree": float(np.mean([len(v) for v in part.neighbours])), "gossip": 1.0}
    merged = {"traditional": n, "serverfree": sum(len(v) + 1 for v in part.neighbours), "gossip": 2 * n}
    sends["gossip-merge"], merged["gossip-merge"] = 1.0, 3 * n
    feature = [node_feature_bytes(size, steps, BYTES_PER_VALUE) for size in sizes]
    return {
        "params": p,
        "model_bytes_per_epoch_per_cloudlet": 0.0 if setup == "centralized" else sends[setup] * p * BYTES_PER_VALUE,
        "feature_bytes_per_epoch_per_site": float(np.mean(feature)),
        "feature_bytes_per_epoch_total": float(sum(feature)),
        "train_flops_per_epoch": float(sum(train_flops(cfg.model, size, len(data.train.x)) for size in sizes)),
        "aggregation_flops_per_epoch": 0.0 if setup == "centralized" else float(merged[setup] * p),
    }


def per_cloudlet(
    y: np.ndarray, pred: np.ndarray, part: Partition, horizons: tuple[int, ...]
) -> list[dict[str, object]]:
    """WMAPE (and MAE) of each cloudlet's own sensors per horizon (the seed's Figure 24)."""
    return [
        {
            "cloudlet": c.index,
            **{f"{h * 5}min": forecast_metrics(y[:, i, c.owned], pred[:, i, c.owned]) for i, h in enumerate(horizons)},
        }
        for c in part.cloudlets
        if len(c.owned)
    ]


def run_setup(data: ForecastData, part: Partition, setup: str, cfg: TrainConfig) -> dict[str, object]:
    """Train ``setup`` for ``cfg.epochs`` local epochs; metrics per horizon, per cloudlet, curve, costs."""
    macs = forward_flops(cfg.model, len(part.kept), cfg.batch_size) // 2
    with intra_op_threads(threads_for(macs, cfg.threads)):
        return _run(data, part, setup, cfg)


def _run(data: ForecastData, part: Partition, setup: str, cfg: TrainConfig) -> dict[str, object]:
    sites = make_sites(data, part, setup, cfg)
    sizes = [len(s.nodes) for s in sites]
    x = torch.from_numpy(data.train.x)
    yz = torch.from_numpy(((data.train.y - data.mean) / data.std).astype(np.float32))
    rng = np.random.default_rng([cfg.seed, 99])
    kept, curve, best, best_epoch, best_states = part.kept, [], np.inf, 0, None
    flops_epoch = costs(setup, sizes, part, data, cfg)["train_flops_per_epoch"]
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        before_epoch(setup, sites)
        loss = float(np.mean([train_epoch(s, x, yz, cfg.batch_size) for s in sites]))
        aggregate(setup, sites, part, rng)
        val = metrics_per_horizon(data.val.y[:, :, kept], predict(sites, data, data.val)[:, :, kept], data.horizons)
        first = next(iter(val))
        curve.append(
            {
                "epoch": epoch,
                "train_loss": loss,
                "val": val,
                "train_flops": epoch * flops_epoch,
                "wall_s": time.perf_counter() - t0,
            }
        )
        if val[first]["mae"] < best:
            best, best_epoch, best_states = (
                val[first]["mae"],
                epoch,
                [copy.deepcopy(s.model.state_dict()) for s in sites],
            )
    assert best_states is not None
    for s, st in zip(sites, best_states, strict=True):
        s.model.load_state_dict(st)
    pred = predict(sites, data, data.test)
    return setup_result(setup, cfg, best_epoch, data, part, kept, pred, curve, costs(setup, sizes, part, data, cfg))


def setup_result(
    setup: str,
    cfg: TrainConfig,
    best_epoch: int,
    data: ForecastData,
    part: Partition,
    kept: Any,
    pred: np.ndarray,
    curve: list[dict[str, Any]],
    cost: dict[str, Any],
) -> dict[str, Any]:
    """What a setup's run reports, in either twin: test metrics of the best epoch's models on the
    kept sensors, per-cloudlet metrics, the validation curve and the overhead counts."""
    return {
        "setup": setup,
        "epochs": cfg.epochs,
        "best_epoch": best_epoch,
        "test": metrics_per_horizon(data.test.y[:, :, kept], pred[:, :, kept], data.horizons),
        "per_cloudlet": per_cloudlet(data.test.y, pred, part, data.horizons),
        "curve": curve,
        "costs": cost,
    }
