"""How a peer process merges the models it received: the decentralized merge rules in numpy.

The simulator's rules live in :mod:`tinytwin.algorithms.mixing` and
:mod:`tinytwin.algorithms.gossip` and work on torch ``(D, P)`` matrices; a device process
must not import torch (docs/emulation.md), so these are the same formulas for *one*
device over plain float32 vectors, in the simulator's message order. A test checks each
against its torch original (tests/test_emulate_dfl.py).

- :func:`mix_row` — DecFedAvg / server-free FL: ``x_i ← W_ii·x_i + Σ_l W_il·z_l`` with the
  device's row of the mixing matrix (computed once, by the coordinator, with
  :func:`tinytwin.net.topology.metropolis_hastings` or
  :func:`tinytwin.algorithms.mixing.serverfree_weights`). The weight of a neighbour whose
  model did not arrive (it died, its link broke) is added to the device's own weight, so
  the row still sums to 1: the device mixes over the remaining graph.
- :func:`merge_average` — gossip ``average``: ``(w + Σ w_m) / (1 + M)``.
- :class:`Fifo` — gossip ``fifo``: a ring of ``buffer_size`` models, initially copies of the
  initial model; the device's model is replaced by the buffer mean before training.
- :func:`merge_age` — gossip ``age``: ``(t·w + t_m·w_m) / (t + t_m)`` per received model in
  order (equal weights when both ages are 0), age ← max.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mix_row(
    own: np.ndarray, self_weight: float, received: Sequence[tuple[float, np.ndarray]], missing_weight: float = 0.0
) -> np.ndarray:
    """One row of ``W · X``: own model weighted ``self_weight + missing_weight``, plus ``Σ w·z``.

    float32 in and out, like the simulator's float32 sparse product (the summation order
    differs, so the results agree to float32 rounding, ~1e-7 relative)."""
    out = np.float32(self_weight + missing_weight) * own.astype(np.float32, copy=False)
    for w, z in received:
        out = out + np.float32(w) * z.astype(np.float32, copy=False)
    return out.astype(np.float32, copy=False)


def merge_average(own: np.ndarray, received: Sequence[np.ndarray]) -> np.ndarray:
    """gossip ``average``: the mean of the own model and every model received this round."""
    if not received:
        return own
    total = np.zeros_like(own, dtype=np.float32)
    for z in received:  # the simulator sums the received models first (index_add_)
        total += z
    return (own + total) / np.float32(1 + len(received))


def merge_age(own: np.ndarray, own_age: int, received: Sequence[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """gossip ``age``: age-weighted merge of each received model in order; returns (model, age)."""
    w, t = own.astype(np.float32, copy=False), int(own_age)
    for z, tm in received:
        total = np.float32(t + tm)
        wa = np.float32(t) / total if total > 0 else np.float32(0.5)
        w = wa * w + (np.float32(1.0) - wa) * z
        t = max(t, int(tm))
    return w, t


class Fifo:
    """gossip ``fifo`` (seed 004): the last ``size`` models received, initially ``size`` copies of
    the initial model; :meth:`mean` is what the device starts its next local round from."""

    def __init__(self, initial: np.ndarray, size: int) -> None:
        self.slots = np.repeat(np.asarray(initial, dtype=np.float32)[None, :], size, axis=0)
        self.count = size
        self.head = 0

    def push(self, model: np.ndarray) -> None:
        self.slots[self.head] = model
        self.head = (self.head + 1) % len(self.slots)
        self.count = min(self.count + 1, len(self.slots))

    def mean(self) -> np.ndarray:
        return fifo_mean(self.slots[: self.count])


def fifo_mean(slots: np.ndarray) -> np.ndarray:
    """The mean of a FIFO buffer's filled slots in float32 (gossip's ``fifo`` merge; the
    numpy kernel of :func:`tinytwin.algorithms.gossip.fifo_mean`)."""
    return (slots.sum(axis=0) / np.float32(max(len(slots), 1))).astype(np.float32)
