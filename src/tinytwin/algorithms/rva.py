"""RVA, the reconfiguration validation algorithm (Čilić et al.; reference/algorithms.md §5.3–5.4).

Accuracy is predicted with a logarithmic regression ``acc(r) ≈ a + b·ln r`` over 1-based
global round indices r (the reference's ``a + b·ln(x + 1)`` with 0-based x). Two decisions,
both in the communication-budget mode:

- **validate?** when a reconfiguration is applied at round t with ``R`` budget left, the new
  configuration is validated only if it affords fewer rounds than the current one:
  ``⌊(R − C_change)/C_round_new⌋ < ⌊R/C_round_cur⌋``.
- **keep or revert?** W rounds later, with ``R`` left: ``n_old = ⌊(R − C_back)/C_round_old⌋``,
  ``n_new = ⌊R/C_round_new⌋``; revert when ``f_old(t + n_old) > f_new(t + n_new)``, where
  ``f_old`` was fitted on the rounds before the change and ``f_new`` on the window's rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["LogFit", "affordable_rounds", "fit_log", "should_validate", "validation_decision"]


@dataclass(frozen=True)
class LogFit:
    """``acc(r) = a + b·ln r``, least squares over the points it was fitted on."""

    a: float
    b: float

    def __call__(self, round_: float) -> float:
        return self.a + self.b * math.log(max(round_, 1.0))


def fit_log(rounds: np.ndarray | list[int], accuracies: np.ndarray | list[float]) -> LogFit:
    """Least-squares fit of ``a + b·ln r``; one point gives the constant curve through it."""
    x = np.log(np.maximum(np.asarray(rounds, dtype=np.float64), 1.0))
    y = np.asarray(accuracies, dtype=np.float64)
    if y.size == 0:
        raise ValueError("fit_log needs at least one point")
    if y.size == 1 or np.ptp(x) == 0.0:
        return LogFit(float(y.mean()), 0.0)
    b, a = np.polyfit(x, y, 1)
    return LogFit(float(a), float(b))


def affordable_rounds(remaining: float, c_round: float, upfront: float = 0.0) -> int:
    """Whole rounds of cost ``c_round`` that ``remaining`` pays for after ``upfront``."""
    if c_round <= 0.0:
        return 10**9  # a free configuration never runs out
    return max(0, math.floor((remaining - upfront) / c_round))


def should_validate(remaining: float, c_round_cur: float, c_round_new: float, c_change: float) -> bool:
    """Whether the new configuration affords fewer rounds than the current one (RVA validates it)."""
    return affordable_rounds(remaining, c_round_new, c_change) < affordable_rounds(remaining, c_round_cur)


@dataclass(frozen=True)
class Decision:
    revert: bool
    round_old: int  # the round at which the old configuration would exhaust the budget
    round_new: int
    predicted_old: float
    predicted_new: float


def validation_decision(
    f_old: LogFit,
    f_new: LogFit,
    t: int,
    remaining: float,
    c_back: float,
    c_round_old: float,
    c_round_new: float,
) -> Decision:
    """RVA's keep-or-revert decision at round ``t`` with ``remaining`` budget."""
    r_old = t + affordable_rounds(remaining, c_round_old, c_back)
    r_new = t + affordable_rounds(remaining, c_round_new)
    p_old, p_new = f_old(r_old), f_new(r_new)
    return Decision(p_old > p_new, r_old, r_new, p_old, p_new)
