"""Segmented gossip (Combo; Hu, Jiang, Wang 2019) — pull contiguous segments from R peers.

reference/algorithms.md §2.3. The flat model is cut into ``S`` equal, non-overlapping,
contiguous segments (:func:`contiguous_bounds`). After local training, for every segment
index s a device picks ``R`` peers (uniformly, with replacement, among its online
neighbours — or among all online devices), pulls their copy of segment s and mixes it with
its own, weighted by local dataset sizes (its own weight included)::

    w_i[s] ← (n_i · w_i[s] + Σ_{p ∈ peers} n_p · w_p[s]) / (n_i + Σ_{p ∈ peers} n_p)

All pulls of a round read the models as they were after local training (lock-step).
On the wire a pull is a small request (segment index) and a response carrying the segment
(``float32`` values of the slice).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["REQUEST_PAYLOAD_BYTES", "contiguous_bounds", "choose_replicas", "segment_pull"]

#: A pull request carries the segment index and the requested range: three uint32 values.
REQUEST_PAYLOAD_BYTES = 12


def contiguous_bounds(num_params: int, segments: int) -> np.ndarray:
    """``S + 1`` boundaries of ``S`` contiguous segments as equal as possible (the first
    ``P mod S`` segments one value longer)."""
    s = max(1, min(segments, num_params))
    base, extra = divmod(num_params, s)
    sizes = np.full(s, base) + (np.arange(s) < extra)
    return np.r_[0, np.cumsum(sizes)].astype(np.int64)


def choose_replicas(
    rng: np.random.Generator,
    pullers: np.ndarray,
    segments: int,
    replicas: int,
    online: np.ndarray,
    neighbours: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """``(len(pullers), S, R)`` peer ids (−1: none), drawn uniformly with replacement."""
    from tinytwin.algorithms.gossip import choose_peers

    pullers = np.asarray(pullers, dtype=np.int64)
    out = np.full((pullers.size, segments, replicas), -1, dtype=np.int64)
    src, dst = choose_peers(rng, pullers, segments * replicas, online, neighbours)
    # choose_peers drops devices with no candidate; the rest keep their draws in order
    row_of = {int(d): i for i, d in enumerate(pullers)}
    for d in np.unique(src):
        out[row_of[int(d)]] = dst[src == d].reshape(segments, replicas)
    return out


def segment_pull(
    params: Tensor,
    weights: Tensor,
    pullers: np.ndarray,
    peers: np.ndarray,
    bounds: np.ndarray,
    received: Tensor | None = None,
) -> Tensor:
    """New models of ``pullers`` after pulling every segment from their ``peers``.

    ``params`` (D, P) are the models after local training; ``weights`` (D,) the local
    dataset sizes; ``peers`` (len(pullers), S, R) from :func:`choose_replicas`;
    ``received`` (D, P), if given, is what the wire decodes of each model (defaults to ``params``).
    Returns a (len(pullers), P) tensor.
    """
    src = params if received is None else received
    rows = torch.from_numpy(np.asarray(pullers, dtype=np.int64))
    out = params[rows].clone()
    w = weights.to(params.dtype)
    own_w = w[rows][:, None]
    for s in range(len(bounds) - 1):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        p = torch.from_numpy(peers[:, s, :])  # (R_pull, R)
        valid = (p >= 0).to(params.dtype)
        pw = w[p.clamp_min(0)] * valid  # (R_pull, R)
        pulled = src[p.clamp_min(0), lo:hi]  # (R_pull, R, L)
        num = own_w * out[:, lo:hi] + (pw[:, :, None] * pulled).sum(dim=1)
        out[:, lo:hi] = num / (own_w + pw.sum(dim=1, keepdim=True))
    return out
