"""The fleet view: where to draw each device, which links to draw, and the value to colour it by.

The database stores devices and their per-round rows but not the graph of a decentralized
run; that graph is a pure function of the stored spec and seed, so it is rebuilt here with
the same code the simulator used (:func:`tinytwin.engines.network.build_network`). When
that is impossible (a centralized run, a topology file that is not beside the run, a
graph too dense to draw) devices are laid out in a grid, one block per group, and the
page says why there are no links.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger("tinytwin.dashboard")

MAX_EDGES = 20_000  # beyond this a drawing is a grey blot, and the JSON gets heavy
SPRING_MAX_NODES = 400  # networkx spring layout cost grows fast; larger graphs use a circle

METRICS: dict[str, tuple[str, str]] = {
    "energy_j": ("Energy, all rounds", "J"),
    "bytes": ("Bytes sent + received, all rounds", "B"),
    "busy_s": ("Compute + airtime, all rounds", "s"),
    "rounds_trained": ("Rounds trained", ""),
    "num_samples": ("Training samples", ""),
    "accuracy": ("Accuracy, latest round", "%"),
    "status": ("Status, latest round", ""),
    "group": ("Group", ""),
}
CATEGORICAL = ("status", "group")


def grid_layout(groups: list[str]) -> np.ndarray:
    """Devices in a near-square grid, each group its own block left to right."""
    pos = np.zeros((len(groups), 2))
    order = list(dict.fromkeys(groups))
    x0 = 0.0
    for g in order:
        idx = [i for i, x in enumerate(groups) if x == g]
        cols = max(1, math.ceil(math.sqrt(len(idx))))
        for j, i in enumerate(idx):
            pos[i] = (x0 + j % cols, -(j // cols))
        x0 += cols + 1.5
    return pos


def topology(spec_yaml: str, run_dir: Path, n: int) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(edges, positions, note) of a decentralized/hierarchical run's graph, rebuilt from its spec."""
    try:
        from tinytwin.engines.network import build_network
        from tinytwin.fleet.build import build_fleet
        from tinytwin.spec.load import validate_spec

        spec = validate_spec(yaml.safe_load(spec_yaml))
        if spec.algorithm.family == "centralized":
            return None, None, "centralized run: every device talks to the server"
        fleet = build_fleet(spec, run_dir)
        if fleet.num_devices != n:
            return None, None, "the spec's fleet does not match the stored devices"
        net = build_network(spec, fleet, run_dir)
    except Exception as exc:  # best effort: any failure only costs the links, never the page
        log.warning("%s: topology not rebuilt (%s)", run_dir, str(exc).splitlines()[0] if str(exc) else type(exc))
        return None, None, "topology could not be rebuilt from the stored spec"
    topo = net.topology
    if topo.num_edges > MAX_EDGES:
        return None, None, f"{topo.kind} topology with {topo.num_edges:,} links: too dense to draw"
    return topo.edges, topo.positions, f"{topo.kind} topology, {topo.num_edges:,} links"


def graph_layout(n: int, edges: np.ndarray, seed: int) -> np.ndarray:
    """Positions for a graph without stored coordinates (spring layout when small, circle otherwise)."""
    if n <= SPRING_MAX_NODES:
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_edges_from(map(tuple, edges.tolist()))
        p = nx.spring_layout(g, seed=seed)
        return np.array([p[i] for i in range(n)])
    t = 2 * np.pi * np.arange(n) / max(n, 1)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def layout(devices: list[dict[str, Any]], spec_yaml: str, run_dir: Path, seed: int) -> dict[str, Any]:
    """Node positions and edge segments (``None``-separated, ready for one Plotly line trace)."""
    n = len(devices)
    edges, positions, note = topology(spec_yaml, run_dir, n) if n else (None, None, "no devices")
    if edges is None:
        pos = grid_layout([d["group"] for d in devices])
        return {"x": pos[:, 0].tolist(), "y": pos[:, 1].tolist(), "edge_x": [], "edge_y": [], "note": note}
    pos = positions if positions is not None else graph_layout(n, edges, seed)
    ex: list[float | None] = []
    ey: list[float | None] = []
    for u, v in edges.tolist():
        ex += [float(pos[u, 0]), float(pos[v, 0]), None]
        ey += [float(pos[u, 1]), float(pos[v, 1]), None]
    return {"x": pos[:, 0].tolist(), "y": pos[:, 1].tolist(), "edge_x": ex, "edge_y": ey, "note": note}


def metric_values(metric: str, devices: list[dict[str, Any]], totals: dict[int, dict[str, Any]]) -> list[Any]:
    """The value of ``metric`` for each device (``None`` where it has no rows yet)."""
    out: list[Any] = []
    for d in devices:
        t = totals.get(d["device"], {})
        if metric == "num_samples":
            out.append(d["num_samples"])
        elif metric == "group":
            out.append(d["group"])
        elif metric == "status":
            out.append(t.get("status") or "offline")
        elif metric == "accuracy":
            a = t.get("accuracy")
            out.append(None if a is None else 100.0 * a)
        else:
            out.append(t.get(metric))
    return out
