"""Which model each device trains: the full model, or a width-nested sub-model of it (issue #11).

A group's ``model_rate`` (a number, or ``auto`` resolved by the memory planner,
:mod:`tinytwin.fleet.rate_choice`) picks the sub-model; every cost that depends on the
model — memory, bytes on the wire, training FLOPs — is then per device, of its own
sub-model. A fleet of one size is the ordinary experiment: one entry, rate 1.0, the model
itself, and no index (the whole vector).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytwin.algorithms.nested import nested_index
from tinytwin.fleet.memory import MemoryPlan, plan_memory
from tinytwin.fleet.rate_choice import RateChoice, choose_rate
from tinytwin.models.families import family_member
from tinytwin.models.zoo import ModelDef
from tinytwin.spec.hetero import AUTO_RATES


@dataclass(frozen=True)
class SubModel:
    """One model size: its rate, its model definition and its global flat positions."""

    rate: float
    model: ModelDef
    positions: np.ndarray | None  # global positions of its parameters; None: the whole vector

    @property
    def index(self) -> np.ndarray:
        """Global flat positions of its parameters, in its own flat order (built on demand:
        the full model of an oversized plan must not allocate one entry per parameter)."""
        if self.positions is None:
            return np.arange(self.model.num_params, dtype=np.int64)
        return self.positions

    @property
    def widths(self) -> dict[str, list[int]]:
        """Its layers' widths by kind, for summaries: hidden linear units and conv channels."""
        linear = [layer.out_features for layer in self.model.layers if layer.kind == "linear"][:-1]
        conv = [layer.out_features for layer in self.model.layers if layer.kind == "conv"]
        return {"hidden": linear, **({"channels": conv} if conv else {})}


@dataclass(frozen=True)
class FleetModels:
    """Per device, the size of model it trains; per size, the sub-model."""

    rates: np.ndarray  # (D,) float: each device's model rate
    sizes: dict[float, SubModel]  # by rate, largest first
    choices: dict[str, RateChoice]  # the ``auto`` groups' choices, by group name

    @property
    def heterogeneous(self) -> bool:
        return len(self.sizes) > 1 or 1.0 not in self.sizes

    def per_device(self, value_of: Any, dtype: Any = np.int64) -> np.ndarray:
        """``value_of(sub_model)`` for each device, as a (D,) array."""
        out = np.empty(self.rates.size, dtype=dtype)
        for rate, sub in self.sizes.items():
            out[self.rates == rate] = value_of(sub)
        return out


def sub_model(model: ModelDef, options: Mapping[str, Any] | None, rate: float) -> SubModel:
    """The rate-``rate`` member of ``model``'s width family (``options``: the full model's)."""
    if rate == 1.0:
        return SubModel(1.0, model, None)
    sub = family_member(model, options, rate)
    full_shapes = [shape for layer in model.layers for shape in layer.param_shapes]
    sub_shapes = [shape for layer in sub.layers for shape in layer.param_shapes]
    return SubModel(rate, sub, nested_index(full_shapes, sub_shapes))


def plan_fleet_models(
    groups: Sequence[Any],
    group_rates: Sequence[float | str],
    model: ModelDef,
    options: Mapping[str, Any] | None,
    num_devices: int,
    max_samples: Sequence[int],
    plan_options: dict[str, Any],
) -> tuple[FleetModels, list[MemoryPlan]]:
    """Resolve every group's rate (``auto``: the largest of :data:`AUTO_RATES` that fits) and
    plan its memory for its sub-model. A group that fits no rate keeps the smallest rate's
    (unfit) plan, so the refusal names its numbers."""
    sizes: dict[float, SubModel] = {}
    rates = np.ones(num_devices)
    plans, choices = [], {}
    for g, wanted, n in zip(groups, group_rates, max_samples):

        def plan_at(rate: float, g: Any = g, n: int = n) -> MemoryPlan:
            sub = sizes.get(rate) or sub_model(model, options, rate)
            sizes.setdefault(rate, sub)
            return plan_memory(g.name, g.profile, sub.model, max_samples=n, **plan_options)

        if wanted == "auto":
            choice = choose_rate(plan_at, AUTO_RATES)
            choices[g.name] = choice
            rate = choice.chosen if choice.chosen is not None else choice.considered[-1][0]
            plans.append(dict(choice.considered)[rate])
        else:
            rate = float(wanted)
            plans.append(plan_at(rate))
        rates[np.asarray(g.devices)] = rate
    used = {float(r) for r in np.unique(rates)}
    ordered = {r: sizes[r] for r in sorted(used, reverse=True)}
    return FleetModels(rates, ordered, choices), plans
