"""Per-device learning-rate schedules for decentralized learning: AdaStair and AdaLoss.

Wulfert, Asadi, Chung, Wiede, Grabmaier (DistributedML '23); rule as implemented in the
group's public simulator (reference/algorithms.md §1). Neither needs coordination: each
device keys its schedule to its *own* round counter ``r_d`` (1-based, the number of local
training rounds it has finished) and its own training loss.

- **AdaStair**: stair points ``ceil(f · T_d)`` for ``f`` in ``stair_fractions``
  (default 0.40, 0.65, 0.75), ``T_d`` = the rounds device d will train in total. When
  ``r_d`` reaches a stair point not yet applied: ``lr ← max(lr / stair_factor, min_lr)``
  (default factor 8, ``min_lr`` 1e-5). The new rate is used from round ``r_d + 1`` on.
- **AdaLoss**: a cumulative mean μ of the device's round losses and a no-improvement
  counter c; patience thresholds ``P = ceil(f · T_d)`` for ``f`` in ``patience_fractions``
  (default 0.30, 0.20, 0.20, 0.10, used in this order, the last one reused). First call:
  μ ← L. Later calls: c ← c + 1 if L ≥ μ else 0, then μ ← (μ·(r − 1) + L)/r. If c > P[k]:
  ``lr ← max(lr / loss_factor, min_lr)`` (default factor 2), c ← 0, k ← min(k + 1, |P| − 1).
- ``both``: AdaStair first, then AdaLoss, in the same call.

Call :meth:`LRSchedule.on_round_end` once per device round, after local training (and
aggregation), with that round's mean training loss. Everything is vectorised over devices;
the state is plain numpy arrays so it checkpoints with the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LRSchedule", "stair_points", "patience_thresholds"]

SCHEDULES = ("none", "adastair", "adaloss", "both")


def stair_points(total_rounds: int, fractions: Sequence[float]) -> list[int]:
    """AdaStair's stair rounds ``ceil(f · T)`` for a device that trains ``T`` rounds."""
    return [int(math.ceil(f * total_rounds)) for f in fractions]


def patience_thresholds(total_rounds: int, fractions: Sequence[float]) -> list[int]:
    """AdaLoss's patience list ``ceil(f · T)``."""
    return [int(math.ceil(f * total_rounds)) for f in fractions]


@dataclass
class LRSchedule:
    """Learning rates of ``num_devices`` devices and the schedule state that changes them."""

    name: str
    lr0: float
    total_rounds: np.ndarray  # (D,) T_d
    stair_fractions: tuple[float, ...] = (0.40, 0.65, 0.75)
    stair_factor: float = 8.0
    patience_fractions: tuple[float, ...] = (0.30, 0.20, 0.20, 0.10)
    loss_factor: float = 2.0
    min_lr: float = 1e-5
    lr: np.ndarray = field(init=False)
    stairs_done: np.ndarray = field(init=False)  # (D, S) bool
    loss_mean: np.ndarray = field(init=False)  # (D,) μ (NaN before the first call)
    counter: np.ndarray = field(init=False)  # (D,) c
    patience_index: np.ndarray = field(init=False)  # (D,) k

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        self.total_rounds = np.asarray(self.total_rounds, dtype=np.int64)
        d = self.total_rounds.size
        self.lr = np.full(d, float(self.lr0))
        self.stairs_done = np.zeros((d, len(self.stair_fractions)), dtype=bool)
        self.loss_mean = np.full(d, np.nan)
        self.counter = np.zeros(d, dtype=np.int64)
        self.patience_index = np.zeros(d, dtype=np.int64)

    @property
    def uses_stairs(self) -> bool:
        return self.name in ("adastair", "both")

    @property
    def uses_loss(self) -> bool:
        return self.name in ("adaloss", "both")

    def stair_rounds(self) -> np.ndarray:
        """(D, S) stair rounds of every device."""
        f = np.asarray(self.stair_fractions, dtype=np.float64)
        return np.ceil(f[None, :] * self.total_rounds[:, None] - 1e-9).astype(np.int64)

    def patience(self) -> np.ndarray:
        """(D, len(P)) patience thresholds of every device."""
        f = np.asarray(self.patience_fractions, dtype=np.float64)
        return np.ceil(f[None, :] * self.total_rounds[:, None] - 1e-9).astype(np.int64)

    def on_round_end(self, devices: np.ndarray, local_round: np.ndarray, train_loss: np.ndarray) -> np.ndarray:
        """Update the rates of ``devices`` after their round ``local_round`` (1-based) ended
        with ``train_loss``; return a bool array marking the devices whose rate changed."""
        ids = np.asarray(devices, dtype=np.int64)
        r = np.asarray(local_round, dtype=np.int64)
        before = self.lr[ids].copy()
        if self.uses_stairs and len(self.stair_fractions):
            hit = (self.stair_rounds()[ids] == r[:, None]) & ~self.stairs_done[ids]
            n_hit = hit.sum(axis=1)
            self.stairs_done[ids] |= hit
            new = self.lr[ids] / self.stair_factor**n_hit
            self.lr[ids] = np.where(n_hit > 0, np.maximum(new, self.min_lr), self.lr[ids])
        if self.uses_loss:
            loss = np.asarray(train_loss, dtype=np.float64)
            ok = np.isfinite(loss)
            mu = self.loss_mean[ids]
            first = np.isnan(mu) & ok
            later = ~np.isnan(mu) & ok
            c = self.counter[ids]
            c = np.where(later, np.where(loss >= mu, c + 1, 0), c)
            rr = np.maximum(r, 1).astype(np.float64)
            mu = np.where(first, loss, np.where(later, (mu * (rr - 1) + loss) / rr, mu))
            k = self.patience_index[ids]
            pat = self.patience()[ids, k] if self.patience().shape[1] else np.full(ids.size, np.iinfo(np.int64).max)
            drop = later & (c > pat)
            self.lr[ids] = np.where(drop, np.maximum(self.lr[ids] / self.loss_factor, self.min_lr), self.lr[ids])
            c = np.where(drop, 0, c)
            k = np.where(drop, np.minimum(k + 1, max(len(self.patience_fractions) - 1, 0)), k)
            self.loss_mean[ids], self.counter[ids], self.patience_index[ids] = mu, c, k
        return self.lr[ids] != before

    # ---- checkpointing --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "lr": self.lr.copy(),
            "stairs_done": self.stairs_done.copy(),
            "loss_mean": self.loss_mean.copy(),
            "counter": self.counter.copy(),
            "patience_index": self.patience_index.copy(),
            "total_rounds": self.total_rounds.copy(),
        }

    def load(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, np.array(value, copy=True))
