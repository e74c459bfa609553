"""Width families: the rate-``r`` member of a zoo model (HeteroFL's width-nested sub-models).

A family is an architecture whose width options (an MLP's hidden widths, a CNN's channels and
fully connected widths) can be scaled while its input and classifier stay whole. The member
of rate ``r`` keeps ``ceil(r * n)`` units of every scaled width, so each of its parameter
tensors is the leading block of the full model's (:func:`tinytwin.algorithms.nested.nested_index`).
Architectures with normalisation layers or residual sums (the WideResNet) are not families
here: their sub-models would need HeteroFL's static batch norm and scaler, which the zoo's
batch-norm-free models do not.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from tinytwin.algorithms.nested import sub_widths
from tinytwin.models.layers import Layer
from tinytwin.models.zoo import ARCHITECTURES, ModelDef, make_model

WIDTH_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden",),
    "lenet5": ("channels", "fc"),
    "dscnn": ("channels",),
}
"""Per architecture, the options whose widths a model rate scales."""


def has_width_family(name: str) -> bool:
    return name in WIDTH_OPTIONS


def full_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` with every width option present (the architecture's default where unset)."""
    defaults = {
        p.name: p.default
        for p in inspect.signature(ARCHITECTURES[name]).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **(options or {})}


def scaled_options(name: str, options: Mapping[str, Any] | None, rate: float) -> dict[str, Any]:
    """The model options of the rate-``rate`` member of ``name``'s family."""
    if name not in WIDTH_OPTIONS:
        families = ", ".join(WIDTH_OPTIONS)
        raise ValueError(f"model rate {rate:g} needs a width family ({families}), not {name}")
    opts = full_options(name, options)
    for key in WIDTH_OPTIONS[name]:
        opts[key] = sub_widths(opts[key], rate)
    return opts


def family_member(model: ModelDef, options: Mapping[str, Any] | None, rate: float) -> ModelDef:
    """The rate-``rate`` member of ``model``'s family (``options``: the full model's options)."""
    return make_model(model.name, model.input_shape, model.num_classes, **scaled_options(model.name, options, rate))


def with_scaler(model: ModelDef, rate: float) -> ModelDef:
    """``model`` with HeteroFL's static scaler: every hidden linear or conv layer's output
    multiplied by ``1 / rate``, so a narrow member's activations keep the full model's scale
    while it trains (the member is evaluated, and held, without it). The classifier is not
    scaled; rate 1 is the model itself."""
    if rate == 1.0:
        return model
    layers = list(model.layers)
    last = max(i for i, layer in enumerate(layers) if layer.kind in ("linear", "conv"))
    out: list[Layer] = []
    for i, layer in enumerate(layers):
        out.append(layer)
        if layer.kind in ("linear", "conv") and i != last:
            out.append(Layer("scale", layer.out_shape, layer.out_shape, factor=1.0 / rate))
    return ModelDef(model.name, tuple(out), model.input_shape, model.num_classes)
