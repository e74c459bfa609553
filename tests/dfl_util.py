"""Helpers shared by the decentralized / hierarchical tests: small specs and engines."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from tinytwin.engines.experiment import prepare
from tinytwin.engines.network import build_network
from tinytwin.engines.runner import make_engine
from tinytwin.spec.load import validate_spec
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore

BASE = {
    "name": "dfl",
    "seed": 3,
    "rounds": 6,
    "dataset": {"name": "digits"},
    "partition": {"method": "iid"},
    "model": {"name": "mlp", "hidden": [16]},
    "fleet": {"groups": [{"profile": "esp32-s3", "count": 8, "link": "wifi"}]},
    "topology": {"kind": "ring"},
    "algorithm": {"name": "gossip", "local_epochs": 1, "batch_size": 8, "lr": 0.1},
}


def spec_dict(**changes):
    """BASE with nested changes: ``algorithm__gossip={"merge": "fifo"}``, ``rounds=3``."""
    base = copy.deepcopy(BASE)
    for key, value in changes.items():
        node = base
        *path, last = key.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return base


def engine(tmp_path: Path, raw: dict):
    """A ready engine and its initial state for ``raw`` (no run folder, no rounds run)."""
    spec = validate_spec(raw)
    exp = prepare(spec)
    net = build_network(spec, exp.fleet) if spec.algorithm.family != "centralized" else None
    store = RunStore(tmp_path / "engine.db")
    dfl_store.ensure_tables(store)
    sim = make_engine(exp, store, "test", net)
    return sim, sim.initial_state()


def communicate_only(sim, st, r: int) -> None:
    """One round of the algorithm's communication and merging, with learning switched off."""
    online = np.ones(sim.n, dtype=bool)
    ctx = sim._ctx(1, r, online, 0.0)
    ids = np.arange(sim.n)
    sim.proto.before_train(st, ids, ctx)
    msgs = sim.proto.after_train(st, ids, ctx)
    sim.proto.deliver(st, msgs)


def distinct_models(sim, st, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    st.params = torch.randn(st.params.shape, generator=g)
    return st.params.clone()


def run_engine(tmp_path: Path, raw: dict, name: str = "run", stop_after: int | None = None):
    """Run ``raw`` in-process without a run folder or report (fast); returns (sim, state, store, run_id).

    ``stop_after`` ends after that round, as a killed run would (the checkpoint is stored)."""
    spec = validate_spec(raw)
    exp = prepare(spec)
    net = build_network(spec, exp.fleet) if spec.algorithm.family != "centralized" else None
    store = RunStore(tmp_path / f"{name}.db")
    run_id = name
    store.create_run(run_id, spec.name, "simulate", spec.seed, "{}", spec.rounds, "test")
    sim = make_engine(exp, store, run_id, net)
    sim.register()
    st = sim.initial_state()
    if stop_after is None:
        st = sim.run(st)
    else:
        for r in range(1, stop_after + 1):
            st = sim.step(st, r)
    return sim, st, store, run_id


def resume_engine(tmp_path: Path, raw: dict, name: str):
    """Continue a run of :func:`run_engine` from its stored checkpoint with a fresh engine."""
    spec = validate_spec(raw)
    exp = prepare(spec)
    net = build_network(spec, exp.fleet) if spec.algorithm.family != "centralized" else None
    store = RunStore(tmp_path / f"{name}.db")
    sim = make_engine(exp, store, name, net)
    _, ck = store.checkpoint(name)
    st = sim.run(sim.state_from_checkpoint(ck))
    return sim, st, store, name
