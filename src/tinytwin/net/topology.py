"""Who can talk to whom: topology generators, mixing weights and a link timeline.

A topology is an undirected simple graph over the fleet's device ids, stored as a sorted
``(E, 2)`` edge array with ``u < v`` (plus device positions in metres where the generator
places devices). Generators (``KINDS``):

- ``full``          every pair of devices (one Wi-Fi network, a complete overlay);
- ``ring``          device i linked to i ± 1 (mod n);
- ``grid``          a ``rows × ceil(n / rows)`` lattice filled row by row (the last row may
                    be partial), linked to the right and down neighbours;
- ``torus``         the same lattice with wrap-around links (needs ``rows · cols == n``);
- ``star``          every device linked to one ``hub``;
- ``erdos_renyi``   each pair linked independently with probability ``p`` (G(n, p));
- ``small_world``   Watts–Strogatz: a ring where each device is linked to its ``k`` nearest
                    ring neighbours, each link rewired with probability ``beta``;
- ``geometric``     devices placed uniformly in an ``area_m`` rectangle (or at the positions
                    of a CSV file) and linked when their distance is within radio range:
                    ``min(range_u, range_v)``, where a device's range comes from its group's
                    link (:data:`RADIO_RANGE_M`) unless ``radius_m`` overrides it;
- ``file``          an edge list read from a CSV file (``u,v`` per line, optional cost column).

A disconnected graph is allowed; :func:`components` reports it. Mixing weights for
decentralized averaging are Metropolis–Hastings weights (:func:`metropolis_hastings`):
symmetric and doubly stochastic on every graph, with weight only on graph links.

Links can go down and come back: :class:`LinkTimeline` holds, for every round, which
links are up (scheduled events plus optional random per-round outages). A device that is
offline (``failures.leave``/``join``/``permanent``) loses all its links for that round.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = [
    "KINDS",
    "RADIO_RANGE_M",
    "LinkTimeline",
    "Topology",
    "build_link_timeline",
    "components",
    "full",
    "geometric",
    "grid",
    "make_topology",
    "metropolis_hastings",
    "read_edge_file",
    "read_positions_file",
    "ring",
    "small_world",
    "star",
    "torus",
    "erdos_renyi",
]

KINDS = ("full", "ring", "grid", "torus", "star", "erdos_renyi", "small_world", "geometric", "file")

#: Typical radio range in metres of each built-in link, used by the ``geometric`` topology
#: (``None``: a wired link, which has no radio range; give ``topology.radius_m``).
#: Ranges vary by an order of magnitude with antenna, power and environment, so these are
#: defaults to override with ``topology.radius_m``, each with where it comes from.
RADIO_RANGE_M: dict[str, tuple[float | None, str]] = {
    "wifi": (
        50.0,
        "estimate: 2.4 GHz 802.11n from an MCU PCB antenna indoors, a few walls: 30-50 m "
        "(Espressif's ESP32 range tests reach ~100+ m line of sight outdoors)",
    ),
    "ble": (
        30.0,
        "estimate: BLE 1M PHY at 0 dBm indoors, 10-50 m (Bluetooth SIG range estimator, "
        "bluetooth.com/learn-about-bluetooth/key-attributes/range); taken as 30 m",
    ),
    "ieee802154": (
        100.0,
        "estimate: 2.4 GHz O-QPSK at 0-8 dBm, ~30 m indoors to 100-200 m line of sight "
        "(Thread/Zigbee single-hop figures); taken as 100 m",
    ),
    "lora": (
        5000.0,
        "estimate: SF7/125 kHz in a suburban setting, 2-5 km to a gateway (rural line of sight "
        "exceeds 10 km); taken as 5 km",
    ),
    "ethernet": (None, "wired: no radio range; set topology.radius_m"),
    "uart": (None, "wired: no radio range; set topology.radius_m"),
}


@dataclass(frozen=True)
class Topology:
    """An undirected simple graph over devices ``0..num_nodes-1``."""

    num_nodes: int
    edges: np.ndarray  # (E, 2) int64, u < v, lexicographically sorted, unique
    kind: str = "custom"
    positions: np.ndarray | None = None  # (n, 2) metres, where the generator placed devices
    costs: np.ndarray | None = None  # (E,) link costs read from an edge file, if any

    def __post_init__(self) -> None:
        e = _canonical(np.asarray(self.edges, dtype=np.int64).reshape(-1, 2), self.num_nodes)
        object.__setattr__(self, "edges", e)

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    def graph(self) -> nx.Graph:
        g = nx.Graph()
        g.add_nodes_from(range(self.num_nodes))
        g.add_edges_from(map(tuple, self.edges.tolist()))
        return g

    def active_edges(self, edge_up: np.ndarray | None = None, online: np.ndarray | None = None) -> np.ndarray:
        """The edges usable now: up on the link timeline and both ends online."""
        keep = np.ones(self.num_edges, dtype=bool) if edge_up is None else np.asarray(edge_up, dtype=bool).copy()
        if online is not None:
            keep &= online[self.edges[:, 0]] & online[self.edges[:, 1]]
        return self.edges[keep]

    def degrees(self, edges: np.ndarray | None = None) -> np.ndarray:
        e = self.edges if edges is None else edges
        return np.bincount(e.ravel(), minlength=self.num_nodes)

    def neighbours(self, edges: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """CSR adjacency ``(indptr, indices)`` of ``edges`` (default: all): neighbours of i are
        ``indices[indptr[i]:indptr[i + 1]]``, sorted."""
        adj = adjacency(self.num_nodes, self.edges if edges is None else edges)
        return adj.indptr.astype(np.int64), adj.indices.astype(np.int64)


def _canonical(edges: np.ndarray, n: int) -> np.ndarray:
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(f"edge endpoints must be device ids 0..{n - 1}")
    e = np.sort(edges, axis=1)
    e = e[e[:, 0] != e[:, 1]]  # no self loops
    if not e.size:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(e, axis=0)


def adjacency(n: int, edges: np.ndarray) -> sp.csr_matrix:
    """Symmetric 0/1 adjacency matrix (CSR, sorted indices)."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    rows = np.concatenate([e[:, 0], e[:, 1]])
    cols = np.concatenate([e[:, 1], e[:, 0]])
    a = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    a.sum_duplicates()
    a.sort_indices()
    return a


# ---------------------------------------------------------------------------------- generators


def full(n: int) -> Topology:
    u, v = np.triu_indices(n, k=1)
    return Topology(n, np.stack([u, v], axis=1), "full")


def ring(n: int) -> Topology:
    if n < 2:
        return Topology(n, np.zeros((0, 2), dtype=np.int64), "ring")
    i = np.arange(n)
    return Topology(n, np.stack([i, (i + 1) % n], axis=1), "ring")


def _grid_shape(n: int, rows: int | None) -> tuple[int, int]:
    if rows is None:
        rows = max(r for r in range(1, int(math.isqrt(n)) + 1) if n % r == 0) if n > 0 else 1
        if rows == 1 and n > 3:  # a prime count: a near-square lattice with a partial last row
            rows = int(math.isqrt(n))
    return rows, -(-n // rows)


def grid(n: int, rows: int | None = None) -> Topology:
    rows, cols = _grid_shape(n, rows)
    i = np.arange(n)
    r, c = i // cols, i % cols
    right = i[(c + 1 < cols) & (i + 1 < n)]
    down = i[i + cols < n]
    edges = np.concatenate([np.stack([right, right + 1], 1), np.stack([down, down + cols], 1)])
    pos = np.stack([c, r], axis=1).astype(np.float64)
    return Topology(n, edges, "grid", positions=pos)


def torus(n: int, rows: int | None = None) -> Topology:
    rows, cols = _grid_shape(n, rows)
    if rows * cols != n:
        raise ValueError(
            f"a torus needs rows x cols == devices; {n} devices do not fill {rows} rows "
            f"of {cols}; choose topology.rows dividing {n}"
        )
    i = np.arange(n)
    r, c = i // cols, i % cols
    edges = np.concatenate([np.stack([i, r * cols + (c + 1) % cols], 1), np.stack([i, ((r + 1) % rows) * cols + c], 1)])
    pos = np.stack([c, r], axis=1).astype(np.float64)
    return Topology(n, edges, "torus", positions=pos)


def star(n: int, hub: int = 0) -> Topology:
    if not 0 <= hub < n:
        raise ValueError(f"hub must be a device id 0..{n - 1}, got {hub}")
    others = np.setdiff1d(np.arange(n), [hub])
    return Topology(n, np.stack([np.full(others.size, hub), others], axis=1), "star")


def erdos_renyi(n: int, p: float, rng: np.random.Generator) -> Topology:
    u, v = np.triu_indices(n, k=1)
    keep = rng.random(u.size) < p
    return Topology(n, np.stack([u[keep], v[keep]], axis=1), "erdos_renyi")


def small_world(n: int, k: int, beta: float, rng: np.random.Generator) -> Topology:
    if n <= 2:
        return Topology(n, full(n).edges, "small_world")
    k = min(k, n - 1)
    g = nx.watts_strogatz_graph(n, k, beta, seed=int(rng.integers(2**31 - 1)))
    return Topology(n, np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2), "small_world")


def geometric(positions: np.ndarray, ranges_m: np.ndarray | float) -> Topology:
    """Link devices whose distance is at most the smaller of their two radio ranges."""
    pos = np.asarray(positions, dtype=np.float64)
    n = pos.shape[0]
    rng_m = np.broadcast_to(np.asarray(ranges_m, dtype=np.float64), (n,))
    # candidate pairs from a k-d tree (no n² distance matrix: 10^5 devices take under a second),
    # then the exact test on each pair's own ranges
    reach = float(rng_m.max()) * (1.0 + 1e-9) if n else 0.0
    pairs = cKDTree(pos).query_pairs(reach, output_type="ndarray") if n > 1 else np.zeros((0, 2), np.int64)
    u, v = pairs[:, 0], pairs[:, 1]
    dist = np.hypot(*(pos[u] - pos[v]).T)
    keep = dist <= np.minimum(rng_m[u], rng_m[v])
    return Topology(n, np.stack([u[keep], v[keep]], axis=1), "geometric", positions=pos)


def _read_rows(path: Path) -> list[list[str]]:
    rows = []
    with open(path, newline="") as fh:
        for row in csv.reader(line for line in fh if line.strip() and not line.lstrip().startswith("#")):
            cells = [c.strip() for c in (row if len(row) > 1 else row[0].split())]
            rows.append(cells)
    return rows


def _numeric(rows: list[list[str]]) -> list[list[str]]:
    """Drop one header row (a first row that is not numeric)."""
    if rows:
        try:
            [float(c) for c in rows[0]]
        except ValueError:
            return rows[1:]
    return rows


def read_edge_file(path: str | Path, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Edges (and optional third-column costs) from a CSV/whitespace file of ``u,v[,cost]`` lines.

    Raises ValueError naming the line for a malformed row or an unknown device id."""
    path = Path(path)
    edges, costs = [], []
    for i, row in enumerate(_numeric(_read_rows(path)), start=1):
        if len(row) not in (2, 3):
            raise ValueError(f"{path}: data row {i} has {len(row)} columns; expected u,v or u,v,cost")
        try:
            u, v = int(row[0]), int(row[1])
            cost = float(row[2]) if len(row) == 3 else None
        except ValueError:
            raise ValueError(f"{path}: data row {i} ({','.join(row)}) is not u,v[,cost] numbers") from None
        if not (0 <= u < n and 0 <= v < n):
            raise ValueError(f"{path}: data row {i} links {u}-{v}, but the fleet has devices 0..{n - 1}")
        edges.append((u, v))
        costs.append(cost)
    e = np.array(edges, dtype=np.int64).reshape(-1, 2)
    if all(c is not None for c in costs) and costs:
        # keep costs aligned with the canonical (sorted, unique) edge order
        key = {tuple(sorted(p)): c for p, c in zip(edges, costs)}
        canon = Topology(n, e).edges
        return canon, np.array([key[tuple(p)] for p in canon.tolist()])
    return e, None


def read_positions_file(path: str | Path, n: int) -> np.ndarray:
    """``(n, 2)`` positions in metres from a CSV file of ``x,y`` lines (one per device, in id order)."""
    path = Path(path)
    rows = _numeric(_read_rows(path))
    if len(rows) != n:
        raise ValueError(f"{path}: {len(rows)} positions for {n} devices; give one x,y line per device")
    try:
        pos = np.array([[float(r[0]), float(r[1])] for r in rows])
    except (ValueError, IndexError):
        raise ValueError(f"{path}: every line must be x,y in metres") from None
    return pos


def make_topology(
    kind: str,
    n: int,
    rng: np.random.Generator,
    *,
    p: float = 0.2,
    k: int = 4,
    beta: float = 0.1,
    rows: int | None = None,
    hub: int = 0,
    area_m: Sequence[float] = (100.0, 100.0),
    ranges_m: np.ndarray | float | None = None,
    positions: np.ndarray | None = None,
    edge_file: str | Path | None = None,
) -> Topology:
    """Build a topology by name; see the module docstring for the kinds and their parameters."""
    if kind == "full":
        return full(n)
    if kind == "ring":
        return ring(n)
    if kind == "grid":
        return grid(n, rows)
    if kind == "torus":
        return torus(n, rows)
    if kind == "star":
        return star(n, hub)
    if kind == "erdos_renyi":
        return erdos_renyi(n, p, rng)
    if kind == "small_world":
        return small_world(n, k, beta, rng)
    if kind == "geometric":
        if positions is None:
            positions = rng.random((n, 2)) * np.asarray(area_m, dtype=np.float64)
        if ranges_m is None:
            raise ValueError("a geometric topology needs radio ranges (topology.radius_m)")
        return geometric(positions, ranges_m)
    if kind == "file":
        if edge_file is None:
            raise ValueError("topology kind 'file' needs topology.file")
        edges, costs = read_edge_file(edge_file, n)
        return Topology(n, edges, "file", positions=positions, costs=costs)
    raise ValueError(f"unknown topology kind {kind!r}; choose one of {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------- analysis


def components(n: int, edges: np.ndarray, active: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """Number of connected components and a label per device. Offline devices (``active``
    False) are left out of the count and labelled -1."""
    count, labels = connected_components(adjacency(n, edges), directed=False)
    if active is None:
        return int(count), labels
    labels = np.where(active, labels, -1)
    return int(np.unique(labels[active]).size), labels


def metropolis_hastings(n: int, edges: np.ndarray, active: np.ndarray | None = None) -> sp.csr_matrix:
    """Metropolis–Hastings mixing matrix (float64 CSR).

    ``W[i, j] = 1 / (1 + max(deg_i, deg_j))`` for every link i–j, ``W[i, i] = 1 − Σ_j W[i, j]``,
    zero elsewhere. Symmetric with non-negative entries and rows summing to 1, hence doubly
    stochastic; averaging with it conserves the mean of the devices' models. Only links
    between ``active`` devices count; an inactive or isolated device keeps ``W[i, i] = 1``.
    """
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if active is not None:
        e = e[active[e[:, 0]] & active[e[:, 1]]]
    deg = np.bincount(e.ravel(), minlength=n).astype(np.float64)
    w = 1.0 / (1.0 + np.maximum(deg[e[:, 0]], deg[e[:, 1]]))
    off = sp.csr_matrix(
        (np.concatenate([w, w]), (np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]]))), shape=(n, n)
    )
    off.sum_duplicates()
    diag = 1.0 - np.asarray(off.sum(axis=1)).ravel()
    out = (off + sp.diags(diag)).tocsr()
    out.sort_indices()
    return out


# ---------------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class LinkTimeline:
    """``up[r - 1, e]``: whether edge ``e`` of the topology is up in round ``r``."""

    edges: np.ndarray
    up: np.ndarray  # (rounds, E) bool

    def edge_up(self, round_: int) -> np.ndarray:
        return self.up[min(round_, self.up.shape[0]) - 1]

    def changes(self, round_: int) -> list[tuple[int, int, str]]:
        """(u, v, 'link_down' | 'link_up') for every edge that changed at the start of ``round_``."""
        now = self.edge_up(round_)
        before = np.ones_like(now) if round_ == 1 else self.edge_up(round_ - 1)
        out = []
        for e in np.flatnonzero(now != before):
            u, v = self.edges[e]
            out.append((int(u), int(v), "link_up" if now[e] else "link_down"))
        return out


def build_link_timeline(
    topology: Topology,
    rounds: int,
    events: Iterable[tuple[int, Sequence[tuple[int, int]], str]] = (),
    down_probability: float = 0.0,
    rng_for_round=None,
) -> LinkTimeline:
    """Link states for every round.

    ``events``: ``(round, [(u, v), ...], 'down' | 'up')``, applied from that round on, in order.
    ``down_probability``: additionally, each link is down in a round with this probability,
    independently (``rng_for_round(r)`` gives that round's generator).
    Raises ValueError for an event naming a pair that is not a link of the topology.
    """
    e = topology.edges
    index = {(int(u), int(v)): i for i, (u, v) in enumerate(e.tolist())}
    scheduled = np.ones((rounds, len(e)), dtype=bool)
    for r, pairs, state in sorted(events, key=lambda ev: ev[0]):
        for u, v in pairs:
            key = (min(u, v), max(u, v))
            if key not in index:
                raise ValueError(f"{u}-{v} is not a link of the {topology.kind} topology")
            scheduled[r - 1 :, index[key]] = state == "up"
    if down_probability > 0 and len(e):
        for r in range(1, rounds + 1):
            scheduled[r - 1] &= rng_for_round(r).random(len(e)) >= down_probability
    return LinkTimeline(e, scheduled)
