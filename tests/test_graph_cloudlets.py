"""Cloudlets (issue #13): assignment within a radius, k-hop halos and node-feature bytes on 8 nodes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tinytwin.graph.cloudlets import node_feature_bytes, partition_graph, partition_summary, project_xy, read_centres
from tinytwin.graph.forecasting import load_graph

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("TINYTWIN_SHARED_DATA", "/work/shared/data")


def _line_graph() -> tuple[np.ndarray, np.ndarray]:
    """Eight sensors on a line (km 0, 1, 2, 3.2, 4, 5, 6, 20), a directed chain i → i+1."""
    xy = np.array([[x * 1000.0, 0.0] for x in (0, 1, 2, 3.2, 4, 5, 6, 20)])
    adj = np.eye(8)
    for i in range(7):
        adj[i, i + 1] = 0.5
    return adj, xy


def test_assignment_halos_and_neighbours_on_eight_nodes() -> None:
    adj, xy = _line_graph()
    centres = np.array([[1000.0, 0.0], [5000.0, 0.0]])
    part = partition_graph(adj, xy, centres, radius_m=4500.0, hops=2)
    a, b = part.cloudlets
    assert a.owned.tolist() == [0, 1, 2] and b.owned.tolist() == [3, 4, 5, 6]
    assert part.dropped.tolist() == [7]  # 15 km from the nearest centre
    assert a.halo.tolist() == [0, 1, 2, 3, 4]  # two hops past node 2, either edge direction
    assert b.halo.tolist() == [1, 2, 3, 4, 5, 6]  # node 7 is dropped, so nobody can fetch it
    assert a.remote.tolist() == [3, 4] and b.remote.tolist() == [1, 2]
    assert part.neighbours == ((1,), (0,))  # centres 4 km apart, radius 4.5 km
    one_hop = partition_graph(adj, xy, centres, radius_m=3000.0, hops=1)
    assert one_hop.cloudlets[0].halo.tolist() == [0, 1, 2, 3] and one_hop.neighbours == ((), ())


def test_node_feature_bytes_are_halo_times_steps_times_value_bytes_times_epochs() -> None:
    adj, xy = _line_graph()
    part = partition_graph(adj, xy, np.array([[1000.0, 0.0], [5000.0, 0.0]]), 4500.0, 2)
    assert node_feature_bytes(len(part.cloudlets[0].halo), steps=12, bytes_per_value=4, epochs=3) == 5 * 12 * 4 * 3
    s = partition_summary(part, steps=12)
    assert [r["feature_bytes_per_epoch"] for r in s["cloudlets"]] == [5 * 48, 6 * 48]  # type: ignore[index]
    assert s["centralized_feature_bytes_per_epoch"] == 7 * 48


def test_metr_la_partition_uses_the_seed004_centres() -> None:
    g = load_graph("metr-la-week", DATA)
    part = partition_graph(
        g.adj, project_xy(g.lat, g.lon), read_centres(ROOT / "examples/seed004-cloudlets.csv"), 8000.0, 2
    )
    assert len(part.cloudlets) == 7 and len(part.kept) + len(part.dropped) == 207
    owned = np.concatenate([c.owned for c in part.cloudlets])
    assert len(np.unique(owned)) == len(owned) == len(part.kept)  # each kept sensor has one owner
    assert all(set(c.owned) <= set(c.halo) for c in part.cloudlets)
