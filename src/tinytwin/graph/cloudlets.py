"""Cloudlets on a sensor graph: who owns which sensor, which halo each must fetch, at what cost.

Reference §6 (seed 004 §3.4): each sensor goes to the nearest cloudlet centre within the
communication radius (7 cloudlets, 8 km); sensors outside every radius are dropped. A cloudlet
trains on the k-hop subgraph of its own sensors (k = number of ST blocks, the model's receptive
field on the graph), so it must fetch the features of the halo nodes other cloudlets hold; loss
and metrics use only its own sensors. Two cloudlets are neighbours (server-free FL) when their
centres lie within the radius of each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytwin.errors import DataError

EARTH_RADIUS_M = 6_378_137.0  # WGS84 equatorial radius, as examples/seed004-cloudlets.csv used


@dataclass(frozen=True)
class Cloudlet:
    """One cloudlet: its own sensors and its k-hop halo (own sensors included), graph indices."""

    index: int
    centre: tuple[float, float]
    owned: np.ndarray
    halo: np.ndarray

    @property
    def remote(self) -> np.ndarray:
        """Halo nodes held by other cloudlets: their features travel between cloudlets."""
        return np.setdiff1d(self.halo, self.owned)


@dataclass(frozen=True)
class Partition:
    """Every cloudlet, the sensors kept (covered by some radius), and the cloudlet neighbourhoods."""

    cloudlets: tuple[Cloudlet, ...]
    kept: np.ndarray
    dropped: np.ndarray
    neighbours: tuple[tuple[int, ...], ...]
    hops: int


def project_xy(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Metres east / north of the sensors' mean position (equirectangular; exact enough at city scale)."""
    lat0, lon0 = float(np.mean(lat)), float(np.mean(lon))
    x = np.radians(np.asarray(lon) - lon0) * EARTH_RADIUS_M * np.cos(np.radians(lat0))
    y = np.radians(np.asarray(lat) - lat0) * EARTH_RADIUS_M
    return np.stack([x, y], axis=1)


def read_centres(path: str | Path) -> np.ndarray:
    """Cloudlet centres (metres, ``x_m,y_m`` with ``#`` comments) from a CSV such as ``seed004-cloudlets.csv``."""
    try:
        rows = [ln for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        return np.array([[float(v) for v in ln.split(",")] for ln in rows[1:]], dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cloudlet centres {path}: {exc}; give a CSV with header x_m,y_m") from exc


def kmeans_centres(xy: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """Lloyd's k-means from a k-means++ start: centres for a graph whose cloudlets are not published."""
    rng = np.random.default_rng(seed)
    centres = [xy[rng.integers(len(xy))]]
    for _ in range(1, k):
        d2 = np.min(((xy[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(xy[rng.choice(len(xy), p=d2 / d2.sum())])
    c = np.array(centres)
    for _ in range(iters):
        label = np.argmin(((xy[:, None] - c[None]) ** 2).sum(-1), axis=1)
        new = np.array([xy[label == j].mean(axis=0) if np.any(label == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


def assign_sensors(xy: np.ndarray, centres: np.ndarray, radius_m: float) -> np.ndarray:
    """Owning cloudlet of every sensor: the nearest centre within ``radius_m``, else −1 (dropped)."""
    dist = np.sqrt(((xy[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
    owner = np.argmin(dist, axis=1)
    return np.where(dist[np.arange(len(xy)), owner] <= radius_m, owner, -1)


def k_hop(adj: np.ndarray, seeds: np.ndarray, hops: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Sorted nodes within ``hops`` edges of ``seeds`` (edges in either direction), within ``allowed``."""
    link = (adj != 0) | (adj.T != 0)
    ok = np.ones(len(adj), bool) if allowed is None else np.isin(np.arange(len(adj)), allowed)
    reached = np.zeros(len(adj), bool)
    reached[seeds] = True
    for _ in range(hops):
        reached |= link[reached].any(axis=0) & ok
    return np.flatnonzero(reached)


def partition_graph(adj: np.ndarray, xy: np.ndarray, centres: np.ndarray, radius_m: float, hops: int) -> Partition:
    """Cloudlets with their owned sensors and k-hop halos, and centre-within-radius neighbourhoods."""
    owner = assign_sensors(xy, centres, radius_m)
    kept = np.flatnonzero(owner >= 0)
    cls = tuple(
        Cloudlet(
            j,
            (float(c[0]), float(c[1])),
            np.flatnonzero(owner == j),
            k_hop(adj, np.flatnonzero(owner == j), hops, kept),
        )
        for j, c in enumerate(centres)
    )
    gap = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    nbrs = tuple(
        tuple(int(i) for i in np.flatnonzero((gap[j] <= radius_m) & (np.arange(len(centres)) != j)))
        for j in range(len(centres))
    )
    return Partition(cls, kept, np.flatnonzero(owner < 0), nbrs, hops)


def node_feature_bytes(halo_size: int, steps: int, bytes_per_value: int = 4, epochs: int = 1) -> int:
    """Bytes of node features a cloudlet receives: every halo node's value at every step, each epoch."""
    return halo_size * steps * bytes_per_value * epochs


def partition_summary(part: Partition, steps: int, bytes_per_value: int = 4) -> dict[str, object]:
    """Per-cloudlet sizes and node-feature bytes per epoch (all halo nodes; those from other cloudlets)."""
    rows = [
        {
            "cloudlet": c.index,
            "owned": int(len(c.owned)),
            "halo": int(len(c.halo)),
            "remote": int(len(c.remote)),
            "neighbours": list(part.neighbours[c.index]),
            "feature_bytes_per_epoch": node_feature_bytes(len(c.halo), steps, bytes_per_value),
            "remote_feature_bytes_per_epoch": node_feature_bytes(len(c.remote), steps, bytes_per_value),
        }
        for c in part.cloudlets
    ]
    return {
        "kept": int(len(part.kept)),
        "dropped": int(len(part.dropped)),
        "hops": part.hops,
        "steps_per_epoch": steps,
        "centralized_feature_bytes_per_epoch": node_feature_bytes(len(part.kept), steps, bytes_per_value),
        "cloudlets": rows,
    }
