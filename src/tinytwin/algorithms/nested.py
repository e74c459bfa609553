"""Width-nested sub-models and their sample-weighted average (HeteroFL, Diao et al. 2021).

A device of model rate ``r`` trains the sub-model that keeps the first ``ceil(r * n)`` units of
each hidden layer of the global MLP; the input and output layers stay full. Its parameters
are a subset of the global flat vector, named once here by :func:`submodel_index` (global
positions, in the sub-model's own flat order), so extraction is ``global[index]`` on every twin.

:func:`nested_average` builds the next global model: each global parameter is the
sample-weighted mean over the devices whose sub-model holds it; a parameter no device holds
keeps its value. Parameters are grouped by *which* rate groups hold them, and each such class
is one :func:`~tinytwin.algorithms.aggregators.weighted_mean` over its holders, so with every
rate 1.0 there is a single class holding every device and the result is FedAvg, bit for bit.

The index arithmetic is numpy only (device processes may use it); the average is torch, like
the other aggregators, so the simulator and the emulation's coordinator share it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RateGroup", "mlp_shapes", "nested_average", "nested_index", "sub_widths", "submodel_index"]


def sub_widths(hidden: Sequence[int], rate: float) -> tuple[int, ...]:
    """Hidden widths of the rate-``rate`` sub-model: ``ceil(rate * n)`` units, at least one."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"model rate must be in (0, 1], got {rate}")
    return tuple(max(1, math.ceil(rate * int(n) - 1e-9)) for n in hidden)


def mlp_shapes(n_in: int, hidden: Sequence[int], n_out: int) -> list[tuple[int, int]]:
    """``(out, in)`` weight shape of each linear layer; each layer's flat block is weight then bias."""
    widths = [int(n_in), *(int(h) for h in hidden), int(n_out)]
    return [(widths[j + 1], widths[j]) for j in range(len(widths) - 1)]


def nested_index(full_shapes: Sequence[Sequence[int]], sub_shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """Global flat positions of a width-nested sub-model's parameters, in its own flat order.

    Each sub-model tensor is the leading block of the full tensor in every dimension (the
    first units of a layer, the first channels of a convolution, the features those feed:
    channel-major flattening and global pooling keep a channel's features a prefix), so one
    rule covers MLPs and CNNs alike: ``sub_vector = global_vector[index]``.
    """
    if len(full_shapes) != len(sub_shapes):
        raise ValueError(f"nested_index: {len(sub_shapes)} sub-model tensors for {len(full_shapes)} full ones")
    parts: list[np.ndarray] = []
    offset = 0
    for full, sub in zip(full_shapes, sub_shapes):
        full, sub = tuple(int(n) for n in full), tuple(int(n) for n in sub)
        if len(full) != len(sub) or any(s > f for s, f in zip(sub, full)):
            raise ValueError(f"nested_index: tensor {sub} is not a leading block of {full}")
        grid = np.meshgrid(*(np.arange(n, dtype=np.int64) for n in sub), indexing="ij")
        parts.append(offset + np.ravel_multi_index(tuple(grid), full).reshape(-1))
        offset += int(np.prod(full))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def submodel_index(n_in: int, hidden: Sequence[int], n_out: int, rate: float) -> np.ndarray:
    """:func:`nested_index` of the rate-``rate`` MLP (hidden widths :func:`sub_widths`; each
    linear layer weight ``(out, in)`` row-major, then bias)."""

    def tensors(widths: Sequence[int]) -> list[tuple[int, ...]]:
        return [shape for out, inp in mlp_shapes(n_in, widths, n_out) for shape in ((out, inp), (out,))]

    return nested_index(tensors(hidden), tensors(sub_widths(hidden, rate)))


@dataclass(frozen=True)
class RateGroup:
    """The devices of one sub-model shape: ``updates`` ``(K, P_g)``, ``weights`` ``(K,)``,
    ``index`` the ``(P_g,)`` global positions of their columns (:func:`submodel_index`)."""

    index: np.ndarray
    updates: object  # torch.Tensor; typed loosely so this module imports without torch
    weights: object


def nested_average(global_vector: object, groups: Sequence[RateGroup]) -> object:
    """Next global vector: per parameter, the sample-weighted mean over the devices holding it.

    Returns a new ``(P,)`` tensor; parameters held by no device (or only by zero-weight
    devices) keep ``global_vector``'s value.
    """
    import torch

    from tinytwin.algorithms.aggregators import weighted_mean

    g = torch.as_tensor(global_vector)
    p = g.shape[0]
    if not groups:
        return g.clone()
    if len(groups) > 62:
        raise ValueError(f"nested_average: at most 62 sub-model shapes, got {len(groups)}")
    code = np.zeros(p, dtype=np.int64)
    positions = []
    for bit, grp in enumerate(groups):
        idx = np.asarray(grp.index, dtype=np.int64)
        if idx.min(initial=0) < 0 or idx.max(initial=-1) >= p:
            raise ValueError(f"nested_average: group {bit}'s index falls outside the {p}-parameter model")
        code[idx] |= 1 << bit
        pos = np.full(p, -1, dtype=np.int64)
        pos[idx] = np.arange(idx.size)
        positions.append(pos)
    out = g.clone()
    for c in np.unique(code):
        if c == 0:
            continue
        cols = np.flatnonzero(code == c)
        holders = [b for b in range(len(groups)) if c >> b & 1]
        rows, weights = [], []
        for b in holders:
            upd = torch.as_tensor(groups[b].updates)
            sel = positions[b][cols]
            full = sel.size == upd.shape[1] and bool((sel == np.arange(sel.size)).all())
            rows.append(upd if full else upd[:, torch.from_numpy(sel)])
            weights.append(torch.as_tensor(groups[b].weights, dtype=upd.dtype))
        w = torch.cat(weights)
        if not bool(w.sum() > 0):
            continue
        value = weighted_mean(rows[0] if len(rows) == 1 else torch.cat(rows), w)
        if cols.size == p:
            out = value
        else:
            out[torch.from_numpy(cols)] = value
    return out
