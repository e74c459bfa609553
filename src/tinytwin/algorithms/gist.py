"""Gist: importance segments, probabilistic sharing and success-weighted merging.

Asadi, Bengü, Wulfert, Wöhrle, Kellerer, FLEdge-AI '25; reference/algorithms.md §2.
A *segment* is a sparse subset of the flat model, sent as a bitmap plus the packed values.

1. **Importance bands** (:func:`band_order`): parameters ranked by ``|w|`` and cut into ``S``
   equal-count bands (the authors' simulator variant: the ``S − 1`` interior quantiles
   ``100·k/S`` as thresholds, so every parameter is in exactly one band). Ties in ``|w|``
   are broken by index, which makes the bands exactly equal in size. ``drop_lowest``
   never sends the lowest band (the paper's text variant).
   SDFA (the random-segment baseline) uses a fresh random permutation instead of the
   ranking (:func:`random_order`).
2. **Probabilistic choice** (:func:`selection_probabilities`) of the band to send, per send:
   ``proportional`` [code]: ``p_i = s̄_i / Σ s̄``, weights ∝ ``base^{p_i}``;
   ``softmax`` [paper]: weights ∝ ``exp(s̄_i)``; ``uniform``: SDFA; with
   ``s̄_i`` = mean ``|w|`` inside band i.
3. **Payload** (:func:`encode_payload`): the sender's accuracy on the shared validation set
   (float32 LE), then the ``bitmap`` encoding of :mod:`tinytwin.wire.encoding` (n bits,
   then the float32 values of the set positions in index order):
   ``4 + ceil(n/8) + 4·nnz`` bytes (:func:`payload_size`).
4. **Merge** (:func:`merge`), once a receiver holds at least ``min_received`` segments:
   ``r_j = Σ_i a_i·v_ij``, ``φ_j = Σ_i a_i·b_ij``, ``w_j ← (r_j + a_local·w_j) / (φ_j + a_local)``;
   coordinates nobody sent keep the local value, and where every weight is 0 the local
   value is kept (the code's fallback). ``vanilla`` merging uses all weights 1:
   ``w_j ← (r_j + w_j) / (φ_j + 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

# the wire payload and the band bounds have one definition, torch-free, for device processes
from tinytwin.algorithms.gist_np import band_bounds, decode_payload, encode_payload, payload_size

__all__ = [
    "accumulate",
    "band_bounds",
    "band_importance",
    "band_of",
    "band_order",
    "decode_payload",
    "encode_payload",
    "merge",
    "merge_reference",
    "payload_size",
    "random_order",
    "segment",
    "segments_of",
    "selection_probabilities",
]

SELECTIONS = ("proportional", "softmax", "uniform")


def band_order(params: Tensor) -> Tensor:
    """(D, P) parameter indices of every device sorted by increasing ``|w|`` (ties by index)."""
    return torch.sort(params.abs(), dim=-1, stable=True).indices


def random_order(rng: np.random.Generator, num_devices: int, num_params: int) -> Tensor:
    """(D, P) a random permutation per device (SDFA's random segments)."""
    keys = rng.random((num_devices, num_params))
    return torch.from_numpy(np.argsort(keys, axis=1, kind="stable"))


def band_importance(params: Tensor, order: Tensor, bounds: np.ndarray) -> Tensor:
    """(D, S) mean ``|w|`` inside each band."""
    a = torch.gather(params.abs(), 1, order)
    cs = torch.nn.functional.pad(a.to(torch.float64).cumsum(dim=1), (1, 0))
    b = torch.from_numpy(bounds)
    sums = cs[:, b[1:]] - cs[:, b[:-1]]
    return (sums / (b[1:] - b[:-1]).clamp_min(1).to(torch.float64)).to(params.dtype)


def selection_probabilities(
    importance: Tensor, mode: str = "proportional", base: float = math.e, drop_lowest: bool = False
) -> Tensor:
    """(D, S) probability of sending each band."""
    imp = importance.to(torch.float64)
    if mode == "uniform":
        logits = torch.zeros_like(imp)
    elif mode == "softmax":
        logits = imp
    elif mode == "proportional":
        p = imp / imp.sum(dim=1, keepdim=True).clamp_min(1e-30)
        logits = p * math.log(base)
    else:
        raise ValueError(f"unknown selection {mode!r}; choose one of {', '.join(SELECTIONS)}")
    if drop_lowest and imp.shape[1] > 1:
        logits = logits.clone()
        logits[:, 0] = -math.inf
    return torch.softmax(logits, dim=1)


def segment(order_row: Tensor, bounds: np.ndarray, band: int) -> Tensor:
    """Sorted parameter indices of one band of one device."""
    return torch.sort(order_row[int(bounds[band]) : int(bounds[band + 1])]).values


def band_of(order: Tensor, bounds: np.ndarray) -> Tensor:
    """(D, P) band index of every parameter of every device (the inverse of :func:`band_order`)."""
    p = order.shape[1]
    rank_band = torch.from_numpy((np.searchsorted(bounds, np.arange(p), side="right") - 1).astype(np.int16))
    out = torch.empty(order.shape, dtype=torch.int16)
    out.scatter_(1, order, rank_band.expand_as(order).contiguous())
    return out


def segments_of(
    params: Tensor, bands: Tensor, rows: Tensor, chosen: Tensor, max_elements: int = 8_000_000
) -> tuple[list[Tensor], list[Tensor]]:
    """Sorted indices and values of band ``chosen[m]`` of device row ``rows[m]`` for every message m.

    ``bands`` is :func:`band_of`; vectorised over messages (in chunks of ``max_elements``)."""
    idx_out: list[Tensor] = []
    val_out: list[Tensor] = []
    p = params.shape[1]
    step = max(1, max_elements // max(p, 1))
    for lo in range(0, len(rows), step):
        r, b = rows[lo : lo + step], chosen[lo : lo + step]
        mask = bands[r] == b.to(bands.dtype)[:, None]
        nz = mask.nonzero()
        counts = mask.sum(dim=1).tolist()
        # compact copies: a message must not keep the whole batch's storage alive in a buffer
        idx_out += [t.clone() for t in nz[:, 1].split(counts)]
        val_out += [t.clone() for t in params[r[nz[:, 0]], nz[:, 1]].split(counts)]
    return idx_out, val_out


# ---------------------------------------------------------------------------------- merge


def accumulate(
    num_rows: int,
    num_params: int,
    rows: Tensor,
    idx: Tensor,
    values: Tensor,
    weight: Tensor,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Weighted sums ``r`` and coverage ``φ`` (both (R, P)) of received segments.

    Entry m of the flat arrays says: receiver row ``rows[m]`` got value ``values[m]`` for
    parameter ``idx[m]`` from a sender with weight ``weight[m]``.
    """
    r = torch.zeros(num_rows, num_params, dtype=dtype)
    phi = torch.zeros(num_rows, num_params, dtype=dtype)
    r.index_put_((rows, idx), weight.to(dtype) * values.to(dtype), accumulate=True)
    phi.index_put_((rows, idx), weight.to(dtype), accumulate=True)
    return r, phi


def merge(own: Tensor, local_weight: Tensor, r: Tensor, phi: Tensor) -> Tensor:
    """``(r + a·w) / (φ + a)`` row-wise, the local value where the denominator is 0."""
    a = local_weight.to(own.dtype).reshape(-1, 1)
    den = phi + a
    return torch.where(den > 0, (r + a * own) / torch.where(den > 0, den, torch.ones_like(den)), own)


def merge_reference(
    own: np.ndarray, local_weight: float, segments: Sequence[tuple[float, np.ndarray, np.ndarray]]
) -> np.ndarray:
    """One receiver, plain loops over segments: the executable definition :func:`merge` must equal.

    ``segments`` holds (sender weight, values, mask) per received segment."""
    out = np.array(own, dtype=np.float64)
    for j in range(out.size):
        r = sum(a * v[j] for a, v, m in segments if m[j])
        phi = sum(a for a, v, m in segments if m[j])
        den = phi + local_weight
        if den > 0:
            out[j] = (r + local_weight * own[j]) / den
    return out
