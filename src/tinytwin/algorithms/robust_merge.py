"""Robust neighbour merging for decentralized averaging (DecFedAvg, server-free FL).

Why: a DFL device averages whatever its neighbours send, so one poisoning peer moves every
neighbour's model (and, over rounds, the whole graph). With ``algorithm.aggregator.name:
median`` or ``trimmed_mean`` a device replaces the weighted mix ``x_i ← Σ_l W_il z_l`` by the
coordinate-wise median (or trimmed mean, ``beta``) of its own model and the models its online
neighbours sent, the decentralized counterpart of FedMedian / FedTrimmedAvg on a server
(reference/algorithms.md; e.g. the "robust aggregation at each node" of Byzantine-resilient
DFL). One definition in numpy, called by the simulator for every device and by each emulated
peer for itself, so the twins merge identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinytwin.algorithms.aggregators_np import aggregate_np

ROBUST_MERGES = ("median", "trimmed_mean")


def robust_merge(own: np.ndarray, received: Sequence[np.ndarray], rule: str, beta: float = 0.1) -> np.ndarray:
    """The ``rule`` over the own model and the received ones (float32 in and out)."""
    if rule not in ROBUST_MERGES:
        raise ValueError(f"unknown robust merge {rule!r}; choose one of {', '.join(ROBUST_MERGES)}")
    stack = np.stack([np.asarray(own, dtype=np.float32), *(np.asarray(z, dtype=np.float32) for z in received)])
    return aggregate_np(rule, stack, beta=beta)
