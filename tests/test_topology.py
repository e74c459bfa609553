"""Topologies: generators, Metropolis–Hastings mixing, link timeline, disconnected graphs."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli, write_spec
from tinytwin.algorithms.mixing import serverfree_weights
from tinytwin.engines.experiment import prepare
from tinytwin.engines.network import build_network
from tinytwin.net.topology import (
    KINDS,
    build_link_timeline,
    components,
    geometric,
    make_topology,
    metropolis_hastings,
    read_edge_file,
    ring,
)
from tinytwin.rng import stream_rng
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import RunStore
from tinytwin.store.dfl import round_metrics

N = 12


def _topology(kind, tmp_path, n=N):
    rng = np.random.default_rng(5)
    kw = {}
    if kind == "torus":
        kw["rows"] = 3
    if kind == "geometric":
        kw["ranges_m"] = 45.0
    if kind == "erdos_renyi":
        kw["p"] = 0.3
    if kind == "file":
        f = tmp_path / "edges.csv"
        f.write_text("# u,v\nu,v\n0,1\n1,2\n2,0\n3,4\n5,6\n6,7\n7,8\n8,9\n10,11\n11,0\n")
        kw["edge_file"] = f
    return make_topology(kind, n, rng, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_mixing_matrix_symmetric_doubly_stochastic_on_every_generator(kind, tmp_path):
    topo = _topology(kind, tmp_path)
    assert topo.num_edges > 0
    for active in (None, np.arange(N) % 4 != 1):  # all devices, and some offline
        w = metropolis_hastings(N, topo.edges, active).toarray()
        assert np.allclose(w, w.T, atol=0)
        assert np.allclose(w.sum(axis=0), 1.0, atol=1e-12) and np.allclose(w.sum(axis=1), 1.0, atol=1e-12)
        assert (w >= 0).all()
        allowed = np.eye(N, dtype=bool)
        e = topo.edges if active is None else topo.edges[active[topo.edges[:, 0]] & active[topo.edges[:, 1]]]
        allowed[e[:, 0], e[:, 1]] = allowed[e[:, 1], e[:, 0]] = True
        assert not (w[~allowed] != 0).any()  # weight only on links
        assert (w[allowed & ~np.eye(N, dtype=bool)] > 0).all()
        if active is not None:
            off = ~active
            assert np.allclose(w[off][:, off], np.eye(off.sum()))  # offline devices keep their model
        sf = serverfree_weights(N, topo.edges, active).toarray()
        assert np.allclose(sf.sum(axis=1), 1.0) and not (sf[~allowed] != 0).any()


def test_generators_have_the_expected_shape(tmp_path):
    deg = lambda t: t.degrees()  # noqa: E731
    assert (deg(_topology("ring", tmp_path)) == 2).all()
    assert _topology("full", tmp_path).num_edges == N * (N - 1) // 2
    star = _topology("star", tmp_path)
    assert deg(star)[0] == N - 1 and (deg(star)[1:] == 1).all()
    torus = _topology("torus", tmp_path)
    assert (deg(torus) == 4).all() and torus.num_edges == 2 * N
    grid = make_topology("grid", 12, np.random.default_rng(0), rows=3)
    assert grid.num_edges == 3 * 3 + 2 * 4 and deg(grid).max() == 4 and deg(grid).min() == 2
    partial = make_topology("grid", 7, np.random.default_rng(0), rows=2)  # 2 x 4 with a partial last row
    assert partial.num_edges == 3 + 2 + 3 and components(7, partial.edges)[0] == 1
    sw = make_topology("small_world", 20, np.random.default_rng(0), k=4, beta=0.2)
    assert sw.num_edges == 20 * 4 // 2
    er = make_topology("erdos_renyi", 60, np.random.default_rng(0), p=0.1)
    assert 0.06 < er.num_edges / (60 * 59 / 2) < 0.14
    with pytest.raises(ValueError, match="torus"):
        make_topology("torus", 7, np.random.default_rng(0), rows=2)


def test_geometric_links_exactly_the_pairs_within_range():
    pos = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 100.0], [0.0, 129.0], [500.0, 500.0]])
    topo = geometric(pos, np.array([50.0, 50.0, 30.0, 30.0, 1e4]))
    assert topo.edges.tolist() == [[0, 1], [2, 3]]  # range is the smaller of the two ends
    assert components(5, topo.edges)[0] == 3


def test_range_comes_from_the_group_link_and_radius_overrides_it():
    groups = [{"profile": "nrf52840", "count": 20, "link": "ble"}, {"profile": "esp32-s3", "count": 20, "link": "lora"}]
    base = {
        "fleet": {"groups": groups},
        "dataset": {"name": "digits"},
        "model": {"hidden": [8]},
        "topology": {"kind": "geometric", "area_m": [2000.0, 2000.0]},
        "algorithm": {"name": "gossip"},
    }
    spec = validate_spec(base)
    exp = prepare(spec)
    net = build_network(spec, exp.fleet)
    assert net.ranges_m[:20].tolist() == [30.0] * 20 and net.ranges_m[20:].tolist() == [5000.0] * 20
    e = net.topology.edges
    lora = (e >= 20).all(axis=1)
    assert lora.sum() == 20 * 19 // 2  # 5 km covers the whole 2 km square
    d = np.hypot(*(net.topology.positions[e[~lora, 0]] - net.topology.positions[e[~lora, 1]]).T)
    assert (d <= 30.0).all()  # any BLE end limits the link to 30 m
    spec = validate_spec({**base, "topology": {"kind": "geometric", "radius_m": 8000.0}})
    assert build_network(spec, exp.fleet).topology.num_edges == 40 * 39 // 2


def test_link_timeline_events_and_random_outages():
    topo = ring(6)
    tl = build_link_timeline(topo, 6, [(2, [(0, 1), (3, 2)], "down"), (4, [(1, 0)], "up")])
    idx = {tuple(e): i for i, e in enumerate(topo.edges.tolist())}
    up01, up23 = tl.up[:, idx[(0, 1)]], tl.up[:, idx[(2, 3)]]
    assert up01.tolist() == [True, False, False, True, True, True]
    assert up23.tolist() == [True] + [False] * 5
    assert (0, 1, "link_down") in tl.changes(2) and (0, 1, "link_up") in tl.changes(4)
    with pytest.raises(ValueError, match="not a link"):
        build_link_timeline(topo, 6, [(2, [(0, 3)], "down")])
    rnd = build_link_timeline(ring(50), 40, [], 0.25, lambda r: stream_rng(1, 102, r))
    assert 0.2 < 1 - rnd.up.mean() < 0.3


def test_edge_file_with_costs_and_bad_rows(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("u,v,cost\n2,1,0.5\n0,1,2.0\n")
    edges, costs = read_edge_file(f, 3)
    assert edges.tolist() == [[0, 1], [1, 2]] and costs.tolist() == [2.0, 0.5]
    f.write_text("0,7\n")
    with pytest.raises(ValueError, match="devices 0..2"):
        read_edge_file(f, 3)


def test_disconnected_graph_is_allowed_and_reported(tmp_path):
    edges = write_spec(tmp_path / "edges.csv", "0,1\n1,2\n3,4\n4,5\n")
    spec = write_spec(
        tmp_path / "spec.yaml",
        f"""
name: split
rounds: 2
dataset: {{name: digits}}
model: {{name: mlp, hidden: [8]}}
fleet: {{groups: [{{profile: esp32-s3, count: 6, link: wifi}}]}}
topology: {{kind: file, file: {edges.name}, link_events: [{{round: 2, edges: [[0, 1]], state: down}}]}}
algorithm: {{name: decfedavg, local_epochs: 1, batch_size: 8}}
""",
    )
    proc = run_cli("run", str(spec), "--out", str(tmp_path / "runs"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    store = RunStore(run_dir / "results.db")
    run_id = store.run_info().run_id
    kinds = {e["kind"]: e["detail"] for e in store.events(run_id)}
    assert "disconnected" in kinds and "[3, 3]" in kinds["disconnected"]
    assert "link_down" in kinds
    comps = [r["components"] for r in round_metrics(store, run_id)]
    assert comps == [2, 3]  # the link going down splits 0 off
    assert store.run_info().summary["topology"]["components"] == 2
    assert (run_dir / "plots" / "accuracy_spread.png").is_file()
    assert (run_dir / "csv" / "device_metrics.csv").read_text().count("\n") == 1 + 2 * 6
