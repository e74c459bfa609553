"""Numpy kernels of the aggregation rules, for processes that never import torch (the
emulation's local aggregators); each one computes what its torch twin in
:mod:`tinytwin.algorithms.aggregators` computes, in the same order of operations, and
``tests/test_aggregators_np.py`` holds them equal to float32 rounding (the BLAS behind a
matrix product may sum in another order)."""

from __future__ import annotations

import math

import numpy as np


def weighted_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sample-weighted mean of the ``(K, P)`` client vectors (FedAvg), as
    :func:`tinytwin.algorithms.aggregators.weighted_mean`: the weights normalised first, then one
    matrix product, in the dtype of ``updates``."""
    w = np.asarray(weights).astype(updates.dtype)
    if w.shape != (len(updates),):
        raise ValueError(f"weights must have shape ({len(updates)},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise ValueError("weights must be finite and non-negative, with a positive sum")
    return (w / w.sum()) @ updates


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    """Per-coordinate median of the ``(K, P)`` vectors, the mean of the two middle values for even
    K, as :func:`tinytwin.algorithms.aggregators.coordinate_median` (and ``numpy.median``)."""
    ordered = np.sort(updates, axis=0)
    k = len(ordered)
    if k % 2 == 1:
        return ordered[k // 2].copy()
    return (ordered[k // 2 - 1] + ordered[k // 2]) / updates.dtype.type(2)


def trimmed_mean(updates: np.ndarray, trim: int) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``trim`` largest and ``trim`` smallest values,
    as :func:`tinytwin.algorithms.aggregators.trimmed_mean` with ``trim = trim_count(K, beta)``."""
    k = len(updates)
    if trim == 0:
        return updates.mean(axis=0, dtype=updates.dtype)
    return np.sort(updates, axis=0)[trim : k - trim].mean(axis=0, dtype=updates.dtype)


def trim_count(k: int, beta: float) -> int:
    """How many values :func:`trimmed_mean` drops at *each* end: ``floor(beta * K)``.

    A 1e-9 tolerance absorbs binary rounding of ``beta * K`` (``0.29 * 100`` is
    ``28.999999999999996`` in floating point but must drop 29); every twin uses this one.
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trimmed mean needs 0 <= beta < 0.5, got beta={beta}")
    return int(math.floor(beta * k + 1e-9))


NP_RULES = ("fedavg", "median", "trimmed_mean")  # the rules with a numpy twin (torch-free processes)


def aggregate_np(rule: str, updates: np.ndarray, weights: np.ndarray | None = None, beta: float = 0.1) -> np.ndarray:
    """Rule ``rule`` of :data:`NP_RULES` over the ``(K, P)`` vectors, as the torch
    :func:`tinytwin.algorithms.aggregators.aggregate` computes it (``weights``: FedAvg's only)."""
    if rule == "median":
        return coordinate_median(updates)
    if rule == "trimmed_mean":
        return trimmed_mean(updates, trim_count(len(updates), beta))
    if rule == "fedavg" and weights is not None:
        return weighted_mean(updates, weights)
    raise ValueError(f"no numpy rule {rule!r} (with these arguments); choose one of {', '.join(NP_RULES)}")
