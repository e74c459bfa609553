"""Which model each device trains: the full model, or a smaller member of its family (issue #11).

A group's ``model_rate`` (a number, or ``auto`` resolved by the memory planner,
:mod:`tinytwin.fleet.rate_choice`) picks the width of its member, and ``model_depth`` (MLPs)
how many hidden layers it keeps; every cost that depends on the model — memory, bytes on the
wire, training FLOPs — is then per device, of its own member. A fleet of one size is the
ordinary experiment: one entry, key ``"1"``, the model itself, and no index (the whole vector).

Where the server keeps its parameters. A width member's tensors are leading blocks of the
global model's. A shallower member shares its hidden layers with the global model too, but
its classifier reads a hidden layer the global classifier does not: that *head* is kept by
the server after the global vector, one full-width head per depth in use (its width members
take its leading block). The server's vector is then ``P`` global parameters followed by
the heads; the global model is its first ``P`` entries, and every twin averages heads like
any other parameter, over the devices that hold them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tinytwin.algorithms.nested import nested_index
from tinytwin.fleet.memory import MemoryPlan, plan_memory
from tinytwin.fleet.rate_choice import RateChoice, choose_rate
from tinytwin.models.families import family_member, with_scaler
from tinytwin.models.zoo import ModelDef
from tinytwin.spec.hetero import AUTO_RATES


def size_key(rate: float, depth: int | None) -> str:
    """How results name a member: ``"0.5"``, or ``"0.5 depth 1"`` for a shallower one."""
    return f"{rate:g}" if depth is None else f"{rate:g} depth {depth}"


@dataclass(frozen=True)
class SubModel:
    """One model size: its rate, depth (None: full), model definition and server positions."""

    rate: float
    model: ModelDef
    positions: np.ndarray | None  # server-vector positions of its parameters; None: the whole vector
    depth: int | None = None
    train_model: ModelDef | None = None  # what it trains and holds, if not ``model`` (HeteroFL's scaler)

    @property
    def trained(self) -> ModelDef:
        """The layer list the device trains and runs: ``model``, or with the scaler's layers
        (parameter-free: ``model`` still gives its sizes, memory and FLOPs)."""
        return self.train_model or self.model

    @property
    def key(self) -> str:
        return size_key(self.rate, self.depth)

    @property
    def index(self) -> np.ndarray:
        """Server-vector positions of its parameters, in its own flat order (built on demand:
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
class Head:
    """A shallower depth's full-width classifier, kept after the global vector on the server."""

    depth: int
    offset: int  # server-vector position of its weight (then its bias)
    n_in: int  # the full model's width of hidden layer ``depth``
    n_out: int  # classes

    @property
    def size(self) -> int:
        return self.n_out * (self.n_in + 1)


@dataclass(frozen=True)
class FleetModels:
    """Per device, the size of model it trains; per size, the sub-model."""

    rates: np.ndarray  # (D,) float: each device's model rate
    keys: np.ndarray  # (D,) str: each device's size key (:func:`size_key`)
    sizes: dict[str, SubModel]  # by key, largest first
    choices: dict[str, RateChoice]  # the ``auto`` groups' choices, by group name
    global_size: int  # P: the global model's parameters
    heads: tuple[Head, ...] = ()

    @property
    def heterogeneous(self) -> bool:
        return len(self.sizes) > 1 or "1" not in self.sizes

    @property
    def server_size(self) -> int:
        """Length of the server's vector: the global model, then the shallower members' heads."""
        return self.global_size + sum(h.size for h in self.heads)

    def of(self, d: int) -> SubModel:
        return self.sizes[str(self.keys[d])]

    def per_device(self, value_of: Any, dtype: Any = np.int64) -> np.ndarray:
        """``value_of(sub_model)`` for each device, as a (D,) array."""
        out = np.empty(self.keys.size, dtype=dtype)
        for key, sub in self.sizes.items():
            out[self.keys == key] = value_of(sub)
        return out

    def initial_heads(self, options: Mapping[str, Any] | None, model: ModelDef, seed: int) -> np.ndarray:
        """The heads' starting values: each the classifier of the full-width model of its depth,
        initialised from the run's seed like the global model."""
        from tinytwin.models.params import ParamLayout  # torch: only when a run starts

        parts = []
        for head in self.heads:
            module = member_model(model, options, 1.0, head.depth).build(seed)
            parts.append(ParamLayout.of(module).flatten(module).numpy()[-head.size :])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _depth_options(options: Mapping[str, Any] | None, depth: int | None) -> dict[str, Any]:
    opts = dict(options or {})
    if depth is not None:
        opts["hidden"] = tuple(opts["hidden"])[:depth]
    return opts


def member_model(model: ModelDef, options: Mapping[str, Any] | None, rate: float, depth: int | None) -> ModelDef:
    """The rate-``rate``, ``depth``-hidden-layer member of ``model``'s family."""
    if rate == 1.0 and depth is None:
        return model
    return family_member(model, _depth_options(options, depth), rate)


def _tensors(model: ModelDef) -> list[tuple[int, ...]]:
    return [tuple(shape) for layer in model.layers for shape in layer.param_shapes]


def sub_model(
    model: ModelDef, options: Mapping[str, Any] | None, rate: float, depth: int | None = None, head: Head | None = None
) -> SubModel:
    """The member of ``model``'s family and its server positions (``options``: the full model's;
    ``head``: where a shallower member's classifier is kept)."""
    if rate == 1.0 and depth is None:
        return SubModel(1.0, model, None)
    sub = member_model(model, options, rate, depth)
    full, mine = _tensors(model), _tensors(sub)
    if depth is None:
        return SubModel(rate, sub, nested_index(full, mine))
    assert head is not None, "a shallower member needs its head's place"
    shared = nested_index(full[: 2 * depth], mine[: 2 * depth])
    classifier = head.offset + nested_index([(head.n_out, head.n_in), (head.n_out,)], mine[2 * depth :])
    return SubModel(rate, sub, np.concatenate([shared, classifier]), depth)


def plan_fleet_models(
    groups: Sequence[Any],
    group_rates: Sequence[float | str],
    model: ModelDef,
    options: Mapping[str, Any] | None,
    num_devices: int,
    max_samples: Sequence[int],
    plan_options: dict[str, Any],
    group_depths: Sequence[int | None] | None = None,
    scaler: bool = False,
) -> tuple[FleetModels, list[MemoryPlan]]:
    """Resolve every group's rate (``auto``: the largest of :data:`AUTO_RATES` that fits at its
    depth) and plan its memory for its member. A group that fits no rate keeps the smallest
    rate's (unfit) plan, so the refusal names its numbers."""
    depths = list(group_depths) if group_depths is not None else [None] * len(groups)
    full_depth = len(options["hidden"]) if options and "hidden" in options else None
    rates = np.ones(num_devices)
    keys = np.full(num_devices, size_key(1.0, None), dtype=object)
    plans, choices, chosen = [], {}, {}
    for g, wanted, n, depth in zip(groups, group_rates, max_samples, depths):
        depth = None if depth == full_depth else depth

        def plan_at(rate: float, g: Any = g, n: int = n, depth: int | None = depth) -> MemoryPlan:
            return plan_memory(
                g.name, g.profile, member_model(model, options, rate, depth), max_samples=n, **plan_options
            )

        if wanted == "auto":
            choice = choose_rate(plan_at, AUTO_RATES)
            choices[g.name] = choice
            rate = choice.chosen if choice.chosen is not None else choice.considered[-1][0]
            plans.append(dict(choice.considered)[rate])
        else:
            rate = float(wanted)
            plans.append(plan_at(rate))
        rates[np.asarray(g.devices)] = rate
        keys[np.asarray(g.devices)] = size_key(rate, depth)
        chosen[size_key(rate, depth)] = (rate, depth)
    heads, offset = [], model.num_params
    hidden = tuple(options["hidden"]) if options and "hidden" in options else ()
    for depth in sorted({d for _, d in chosen.values() if d is not None}):
        heads.append(Head(depth, offset, int(hidden[depth - 1]), model.num_classes))
        offset += heads[-1].size
    by_depth = {h.depth: h for h in heads}
    members = [
        sub_model(model, options, rate, depth, by_depth.get(depth) if depth is not None else None)
        for rate, depth in chosen.values()
    ]
    if scaler:
        members = [replace(s, train_model=with_scaler(s.model, s.rate)) for s in members]
    members.sort(key=lambda s: (-(s.depth if s.depth is not None else 1 << 30), -s.rate))
    sizes = {s.key: s for s in members}
    return FleetModels(rates, keys.astype(str), sizes, choices, model.num_params, tuple(heads)), plans
