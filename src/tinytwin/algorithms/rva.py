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

In the target-accuracy mode (least cost to reach a target) the same two steps compare costs:
with ``r*`` the round at which ``f_old`` reaches the target, the new configuration is validated
when ``(r* − t)·C_round_cur − C_change`` affords fewer than ``r* − t`` of its rounds; after the
window, revert when ``C_back + (f_old⁻¹(target) − t)·C_round_old < (f_new⁻¹(target) − t)·C_round_new``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LogFit",
    "affordable_rounds",
    "fit_log",
    "should_validate",
    "should_validate_for_target",
    "target_decision",
    "validation_decision",
]


@dataclass(frozen=True)
class LogFit:
    """``acc(r) = a + b·ln r``, least squares over the points it was fitted on."""

    a: float
    b: float

    def __call__(self, round_: float) -> float:
        return self.a + self.b * math.log(max(round_, 1.0))

    def round_reaching(self, accuracy: float) -> float:
        """The round at which the curve reaches ``accuracy`` (inf when it never does)."""
        if self.b <= 0.0:
            return 0.0 if self.a >= accuracy else math.inf
        return math.exp(min((accuracy - self.a) / self.b, 700.0))


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
    """Keep or revert, with the rounds and the figures compared: predicted accuracies at the
    budget's last round (budget mode) or the costs to reach the target (target mode)."""

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


def should_validate_for_target(
    f_old: LogFit, t: int, target: float, c_round_cur: float, c_round_new: float, c_change: float
) -> bool:
    """Target mode: whether the new configuration buys fewer rounds than the old one needs to reach ``target``."""
    needed = f_old.round_reaching(target) - t
    if not math.isfinite(needed) or needed <= 0 or c_round_new <= 0:
        return False
    return (needed * c_round_cur - c_change) / c_round_new < needed


def target_decision(
    f_old: LogFit, f_new: LogFit, t: int, target: float, c_back: float, c_round_old: float, c_round_new: float
) -> Decision:
    """Target mode's keep-or-revert: the cheaper way to reach ``target`` from round ``t``."""
    r_old, r_new = f_old.round_reaching(target), f_new.round_reaching(target)
    cost_old = c_back + max(r_old - t, 0.0) * c_round_old
    cost_new = max(r_new - t, 0.0) * c_round_new
    big = 10**9
    return Decision(
        cost_old < cost_new,
        int(min(r_old, big)),
        int(min(r_new, big)),
        cost_old,
        cost_new,
    )
