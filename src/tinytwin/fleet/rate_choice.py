"""``model_rate: auto``: give a device group the largest sub-model whose training fits it.

The memory planner (:func:`tinytwin.fleet.memory.plan_memory`) is run on the width-nested
sub-model (:func:`tinytwin.algorithms.nested.sub_widths`) of each candidate rate, largest
first; the first whose training fits the RAM and whose model and data fit the flash is chosen.
Every plan considered is kept, so ``tinytwin plan`` can show why smaller rates were needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tinytwin.algorithms.nested import sub_widths
from tinytwin.fleet.memory import MemoryPlan, plan_memory
from tinytwin.models.zoo import make_model
from tinytwin.spec.hetero import AUTO_RATES


@dataclass(frozen=True)
class RateChoice:
    """The plans of the rates considered (largest first) and the rate chosen (None: none fits)."""

    considered: tuple[tuple[float, MemoryPlan], ...]
    chosen: float | None

    def explain(self) -> str:
        """One line: each rate with its RAM and flash need, then the choice."""
        parts = [
            f"{rate:g}: RAM {plan.ram_needed:,} of {plan.ram_available:,} B, flash {plan.flash_needed:,} of "
            f"{plan.flash_available:,} B ({'fits' if plan.fits else 'does not fit'})"
            for rate, plan in self.considered
        ]
        pick = f"chosen {self.chosen:g}" if self.chosen is not None else "no rate fits"
        return f"rates considered: {'; '.join(parts)}; {pick}"


def choose_rate(plan_at: Callable[[float], MemoryPlan], candidates: Sequence[float] = AUTO_RATES) -> RateChoice:
    """Plan each candidate rate, largest first, stopping at the first that fits."""
    considered = []
    for rate in sorted(candidates, reverse=True):
        plan = plan_at(rate)
        considered.append((rate, plan))
        if plan.fits:
            return RateChoice(tuple(considered), rate)
    return RateChoice(tuple(considered), None)


def mlp_plan_at(
    group: str,
    profile: Any,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int],
    **plan_options: Any,
) -> Callable[[float], MemoryPlan]:
    """The memory plan of the group's rate-r MLP sub-model, as a function of r."""

    def plan_at(rate: float) -> MemoryPlan:
        model = make_model("mlp", input_shape, num_classes, hidden=sub_widths(hidden, rate))
        return plan_memory(group, profile, model, **plan_options)

    return plan_at
