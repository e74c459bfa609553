"""Heterogeneous fleets: each device group may train a width-nested sub-model (issue #11).

``fleet.groups[i].model_rate`` is the fraction of each hidden layer's units the group's devices
train (HeteroFL, Diao et al. 2021; :mod:`tinytwin.algorithms.nested` defines the sub-model
and the average). ``auto`` leaves the choice to the memory planner. Kept out of
``spec/schema.py`` so the rules of mixed models live in one place.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tinytwin.models.families import WIDTH_OPTIONS


def _parse_rate(value: object) -> object:
    """``auto`` or a number in (0, 1]; anything else is refused with the allowed values."""
    if value == "auto":
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0.0 < float(value) <= 1.0:  # type: ignore[arg-type]
        raise ValueError(f"must be a number in (0, 1] or auto, got {value!r}")
    return float(value)  # type: ignore[arg-type]


ModelRate = Annotated[float | Literal["auto"], BeforeValidator(_parse_rate)]
"""A group's sub-model width: a fraction in (0, 1] of each hidden layer, or ``auto``."""

AUTO_RATES = (1.0, 0.5, 0.25, 0.125)
"""The rates ``auto`` considers, largest first; the planner takes the first that fits."""


class ProxySpec(BaseModel):
    """The unlabeled data the server distils on: a held-out slice of the training set (removed
    from the devices' data before partitioning) or the first samples of another dataset of
    the same input shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: Literal["holdout", "mnist", "fashion-mnist", "digits", "cifar10"] = Field(
        description="holdout: a seeded slice of the training set; or a dataset name (same input shape)"
    )
    samples: Annotated[int, Field(ge=1, le=100_000)] = Field(default=500, description="proxy samples")
    data_dir: str | None = Field(default=None, description="folder of the proxy dataset's files")


class DistillationSpec(BaseModel):
    """Ensemble distillation at the server (FedDF, Lin et al. 2020): after the (nested) average,
    the global model is trained to match the mean logits of every received model on the
    proxy set. SGD rather than FedDF's Adam: every twin then reaches the same model to 1e-6."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    proxy: ProxySpec
    epochs: Annotated[int, Field(ge=1, le=100)] = 1
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 0.05
    temperature: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    server_profile: str = Field(
        default="raspberry-pi-4", description="device catalog profile whose compute time and energy the server pays"
    )


def is_heterogeneous(spec: Any) -> bool:
    """True when some group trains less than the full model (or lets the planner choose)."""
    return any(g.model_rate != 1.0 or _shallower(spec, g) for g in spec.fleet.groups)


def _shallower(spec: Any, group: Any) -> bool:
    return group.model_depth is not None and (spec.model.name != "mlp" or group.model_depth < len(spec.model.hidden))


def _check_depths(spec: Any) -> None:
    for i, g in enumerate(spec.fleet.groups):
        if g.model_depth is None:
            continue
        key = f"fleet.groups.{i}.model_depth"
        if spec.model.name != "mlp":
            raise ValueError(f"{key}: depth variants apply to the mlp model (hidden layers), not {spec.model.name}")
        if g.model_depth > len(spec.model.hidden):
            raise ValueError(
                f"{key}: {g.model_depth} hidden layers, but model.hidden has {len(spec.model.hidden)}; "
                f"use 1 to {len(spec.model.hidden)}"
            )


def _check_scaler(spec: Any) -> None:
    if spec.algorithm.aggregator.name != "nested":
        raise ValueError("algorithm.aggregator.scaler: scales nested members; set algorithm.aggregator.name: nested")
    boards = [i for i, g in enumerate(spec.fleet.groups) if g.twin in ("firmware", "wasm") and g.model_rate != 1.0]
    if boards:
        raise ValueError(
            f"algorithm.aggregator.scaler: the C client of fleet.groups.{boards[0]} (twin "
            f"{spec.fleet.groups[boards[0]].twin}) has no scaler; use twin: process or drop the scaler"
        )


def check_hetero(spec: Any) -> None:
    """Refuse mixed-model experiments the twins cannot run, naming the key and the fix."""
    if spec.algorithm.distillation is not None and spec.algorithm.aggregator.name != "nested":
        raise ValueError(
            "algorithm.distillation: distils after nested averaging; set algorithm.aggregator.name: nested"
        )
    if spec.algorithm.distillation is not None and spec.model.name not in WIDTH_OPTIONS:
        raise ValueError(
            f"algorithm.distillation: applies to the width families ({', '.join(WIDTH_OPTIONS)}), not {spec.model.name}"
        )
    if spec.algorithm.aggregator.scaler:
        _check_scaler(spec)
    if spec.algorithm.aggregator.name == "nested" and spec.algorithm.family != "centralized":
        raise ValueError(
            f"algorithm.aggregator.name: nested averaging applies to fedavg and fedprox, not {spec.algorithm.name}"
        )
    _check_depths(spec)
    if not is_heterogeneous(spec):
        return
    where = next(i for i, g in enumerate(spec.fleet.groups) if g.model_rate != 1.0 or _shallower(spec, g))
    field = "model_rate" if spec.fleet.groups[where].model_rate != 1.0 else "model_depth"
    key = f"fleet.groups.{where}.{field}"
    if spec.model.name not in WIDTH_OPTIONS:
        raise ValueError(
            f"{key}: sub-model rates scale the widths of {', '.join(WIDTH_OPTIONS)}; "
            f"{spec.model.name} has none to scale (use 1.0)"
        )
    if spec.algorithm.family != "centralized":
        raise ValueError(f"{key}: smaller members apply to fedavg and fedprox so far, not {spec.algorithm.name}")
    if spec.algorithm.aggregator.name != "nested":
        raise ValueError(
            f"{key}: groups of different model sizes need algorithm.aggregator.name: nested "
            f"(not {spec.algorithm.aggregator.name})"
        )
    if spec.attacks:
        raise ValueError(f"{key}: attacks apply to fleets of one model size so far; use 1.0 or drop attacks")
