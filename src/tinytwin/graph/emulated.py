"""Emulation twin of the cloudlet setups: one OS process per cloudlet.

Each cloudlet process starts with its own sensors' series only. It sends the features other
cloudlets' halos need (scaled float32 speeds, every step, once) as frames relayed by the
coordinator, builds its halo windows from its own and the received features, and trains with
the simulator's functions (``setups.new_site``, ``setups.train_epoch``). Models travel as
float32 frames; the coordinator applies the shared merge rules (``merges``), acting as the
master (traditional FL) and as the network that carries server-free and gossip messages.
Metrics come from the predictions each cloudlet returns for its own sensors, so a test can
hold them equal to the simulator's.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from tinytwin.graph import merges
from tinytwin.graph.cloudlets import Partition
from tinytwin.graph.forecasting import ForecastData, Windows, make_windows, metrics_per_horizon
from tinytwin.graph.setups import TrainConfig, costs, new_site, setup_result, site_sizes, train_epoch
from tinytwin.graph.stgcn import Stgcn, scaled_laplacian

FEATURE_HEADER = 16  # bytes of a feature frame's header: source, destination, node count, step count


def _flat(state: merges.State) -> bytes:
    return np.concatenate([v.detach().numpy().ravel() for v in state.values()]).astype(np.float32).tobytes()


def _unflat(data: bytes, like: merges.State) -> merges.State:
    vec, out, at = np.frombuffer(data, np.float32), {}, 0
    for k, v in like.items():
        out[k] = torch.from_numpy(vec[at : at + v.numel()].copy()).reshape(v.shape)
        at += v.numel()
    return out


def _halo_series(conn: Connection, job: dict[str, Any]) -> np.ndarray:
    """Send the owned features others need, receive the remote ones: (steps, halo) scaled float32."""
    own_scaled = ((job["own_speed"] - job["mean"]) / job["std"]).astype(np.float32)
    for dst, positions in job["needs"]:
        conn.send(("features", dst, job["owned"][positions], own_scaled[:, positions].tobytes()))
    halo = np.zeros((len(own_scaled), len(job["halo"])), np.float32)
    halo[:, job["own_pos"]] = own_scaled
    missing = len(job["halo"]) - len(job["own_pos"])
    while missing:
        _, nodes, data = conn.recv()
        block = np.frombuffer(data, np.float32).reshape(len(own_scaled), len(nodes))
        halo[:, np.searchsorted(job["halo"], nodes)] = block
        missing -= len(nodes)
    return halo


def cloudlet_main(conn: Connection, job: dict[str, Any]) -> None:
    """One cloudlet process: features, then train / evaluate on the coordinator's commands."""
    torch.set_num_threads(1)
    cfg: TrainConfig = job["cfg"]
    halo = _halo_series(conn, job)
    a, b = job["bounds"]
    parts = [
        make_windows(job["own_speed"][s], halo[s].astype(np.float64), job["history"], job["horizons"])
        for s in (slice(0, a), slice(a, b), slice(b, None))
    ]
    parts = [
        Windows(w.x[:n], w.y[:n]) for w, n in zip(parts, job["windows"], strict=True)
    ]  # as many as the coordinator's
    torch.manual_seed(cfg.seed)
    base = Stgcn(cfg.model)
    # the graph operator comes from the coordinator: a LAPACK call in a forked child can stall for seconds
    site = new_site(np.arange(len(job["halo"])), job["own_pos"], job["sub_adj"], base, cfg, job["index"], job["gso"])
    x = torch.from_numpy(parts[0].x)
    yz = np.zeros((len(x), len(job["horizons"]), len(job["halo"])), np.float32)
    yz[:, :, job["own_pos"]] = ((parts[0].y - job["mean"]) / job["std"]).astype(np.float32)
    yz_t = torch.from_numpy(yz)
    like = {k: v.detach().clone() for k, v in site.model.state_dict().items()}
    while True:
        cmd, state, which = conn.recv()
        if state is not None:
            site.model.load_state_dict(_unflat(state, like))
        if cmd == "train":
            loss = train_epoch(site, x, yz_t, cfg.batch_size)
            conn.send(("trained", loss, _flat(site.model.state_dict())))
        elif cmd == "predict":
            conn.send(("predicted", _predict(site, parts[which].x, job["mean"], job["std"])))
        else:
            return


@torch.no_grad()
def _predict(site: Any, x_np: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    site.model.eval()
    x = torch.from_numpy(x_np)
    z = np.concatenate([site.model(x[i : i + 256], site.gso)[:, :, site.own].numpy() for i in range(0, len(x), 256)])
    return z * std + mean


def _jobs(data: ForecastData, part: Partition, cfg: TrainConfig) -> list[dict[str, Any]]:
    """What each cloudlet process starts with: its own sensors' series, its halo, whom to feed."""
    assert data.speed is not None, "load_forecast keeps the raw series the cloudlets start from"
    jobs = []
    for c in part.cloudlets:
        needs = [(o.index, np.flatnonzero(np.isin(c.owned, o.halo))) for o in part.cloudlets if o.index != c.index]
        jobs.append(
            {
                "index": c.index,
                "halo": c.halo,
                "owned": c.owned,
                "own_pos": np.searchsorted(c.halo, c.owned),
                "own_speed": data.speed[:, c.owned],
                "mean": data.mean[c.owned],
                "std": data.std[c.owned],
                "sub_adj": data.graph.adj[np.ix_(c.halo, c.halo)],
                "gso": scaled_laplacian(data.graph.adj[np.ix_(c.halo, c.halo)]),
                "bounds": data.bounds,
                "history": data.history,
                "horizons": data.horizons,
                "cfg": cfg,
                "windows": (len(data.train.x), len(data.val.x), len(data.test.x)),
                "needs": [(d, pos) for d, pos in needs if len(pos)],
            }
        )
    return jobs


def _relay_features(conns: list[Connection], jobs: list[dict[str, Any]]) -> int:
    """Collect every feature frame first (senders never wait on a reader), then deliver; bytes sent."""
    frames = [conns[j].recv() for j, job in enumerate(jobs) for _ in job["needs"]]
    for _, dst, nodes, data in frames:
        conns[dst].send(("features", nodes, data))
    return sum(len(f[3]) + FEATURE_HEADER for f in frames)


def _ask(conns: list[Connection], cmd: str, states: list[merges.State] | None, which: int | None) -> list[Any]:
    for j, conn in enumerate(conns):
        conn.send((cmd, None if states is None else _flat(states[j]), which))
    return [conn.recv() for conn in conns]


def _assemble(data: ForecastData, part: Partition, preds: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    out = np.full(shape, np.nan)
    for c, (_, p) in zip(part.cloudlets, preds, strict=True):
        out[:, :, c.owned] = p
    return out


def run_emulated(data: ForecastData, part: Partition, setup: str, cfg: TrainConfig) -> dict[str, object]:
    """Run a cloudlet ``setup`` with one process per cloudlet; metrics as ``run_setup`` reports them."""
    if setup == "centralized":
        raise ValueError("centralized training has no cloudlets to emulate; run it with run_setup")
    ctx = mp.get_context("forkserver")
    # torch._dynamo: torch.optim imports it when the first optimizer is built (~1 s a process); load it once
    ctx.set_forkserver_preload(["tinytwin.graph.emulated", "torch._dynamo"])
    jobs = _jobs(data, part, cfg)
    pipes = [ctx.Pipe() for _ in jobs]
    procs = [
        ctx.Process(target=cloudlet_main, args=(child, job), daemon=True)
        for (_, child), job in zip(pipes, jobs, strict=True)
    ]
    for p in procs:
        p.start()
    conns = [parent for parent, _ in pipes]
    try:
        feature_bytes = _relay_features(conns, jobs)
        result = _epochs(conns, data, part, setup, cfg)
        for conn in conns:
            conn.send(("stop", None, None))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    result["feature_bytes_sent"] = feature_bytes
    return result


def _epochs(
    conns: list[Connection], data: ForecastData, part: Partition, setup: str, cfg: TrainConfig
) -> dict[str, object]:
    torch.manual_seed(cfg.seed)
    init = {k: v.detach().clone() for k, v in Stgcn(cfg.model).state_dict().items()}
    states = [init for _ in conns]
    buffers: list[deque[merges.State]] = [deque([init, init], maxlen=2) for _ in conns]
    rng = np.random.default_rng([cfg.seed, 99])
    kept, curve, best, best_epoch, best_states, model_bytes = part.kept, [], np.inf, 0, states, 0
    size = len(_flat(init))
    cost = costs(setup, site_sizes(part, setup), part, data, cfg)
    for epoch in range(1, cfg.epochs + 1):
        pre = merges.before_epoch(setup, states, buffers)
        replies = _ask(conns, "train", pre, None)
        model_bytes += size * len(conns) * (2 if pre is not None else 1)
        like = states[0]
        states = [_unflat(r[2], like) for r in replies]
        post = merges.after_epoch(setup, states, part.neighbours, buffers, rng)
        states = post if post is not None else states
        model_bytes += 0 if post is None else size * len(conns)
        val_pred = _assemble(data, part, _ask(conns, "predict", post, 1), data.val.y.shape)
        val = metrics_per_horizon(data.val.y[:, :, kept], val_pred[:, :, kept], data.horizons)
        first = next(iter(val))
        curve.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean([r[1] for r in replies])),
                "val": val,
                "train_flops": epoch * cost["train_flops_per_epoch"],
            }
        )
        if val[first]["mae"] < best:
            best, best_epoch, best_states = val[first]["mae"], epoch, states
    pred = _assemble(data, part, _ask(conns, "predict", best_states, 2), data.test.y.shape)
    return {
        **setup_result(setup, cfg, best_epoch, data, part, kept, pred, curve, cost),
        "model_bytes_sent": model_bytes,
    }
