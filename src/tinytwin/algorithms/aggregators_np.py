"""Numpy kernels of the aggregation rules, for processes that never import torch (the
emulation's local aggregators); each one computes what its torch twin in
:mod:`tinytwin.algorithms.aggregators` computes, in the same order of operations, and
``tests/test_aggregators_np.py`` holds them equal to float32 rounding (the BLAS behind a
matrix product may sum in another order)."""

from __future__ import annotations

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
