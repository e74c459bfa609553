"""The torch module that executes a layer list (the simulator's model).

Kept apart from :mod:`tinytwin.models.zoo` so that model definitions, parameter counts and
memory plans import without torch (``tinytwin plan`` and ``devices`` start in a fraction of
the time importing torch takes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tinytwin.models.layers import Layer, block_parts


class LayerModule(nn.Module):
    """A torch module that executes a layer list in order."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        super().__init__()
        self.layer_specs = list(layers)
        blocks: list[nn.Module] = []
        for layer in layers:
            blocks.append(_torch_layer(layer))
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Scale(nn.Module):
    """Multiplies by a constant (HeteroFL's scaler; no parameters)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class ResBlock(nn.Module):
    """A residual basic block: ``main(x) + shortcut(x)``, then ReLU (:func:`block_parts`).

    Its parameters register in :func:`block_parts` order (main path, then shortcut), the
    order :attr:`Layer.param_shapes` promises for the flat vector.
    """

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        parts = block_parts(layer)
        main = 5  # conv, norm, ReLU, conv, norm; then the shortcut's layers, the sum and the ReLU
        self.main = nn.Sequential(*(_torch_layer(p) for p in parts[:main]))
        self.shortcut = nn.Sequential(*(_torch_layer(p) for p in parts[main:-2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.main(x) + self.shortcut(x))


def _torch_layer(layer: Layer) -> nn.Module:
    if layer.kind == "linear":
        return nn.Linear(layer.in_features, layer.out_features)
    if layer.kind == "conv":
        return nn.Conv2d(
            layer.in_features,
            layer.out_features,
            layer.kernel,
            stride=layer.stride,
            padding=layer.padding,
            groups=layer.groups,
            bias=layer.bias,
        )
    if layer.kind == "groupnorm":
        return nn.GroupNorm(layer.groups, layer.out_features)
    if layer.kind == "resblock":
        return ResBlock(layer)
    if layer.kind == "relu":
        return nn.ReLU()
    if layer.kind == "scale":
        return Scale(layer.factor)
    if layer.kind == "maxpool":
        return nn.MaxPool2d(layer.kernel)
    if layer.kind == "avgpool":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(start_dim=-3))
    if layer.kind == "flatten":
        return nn.Flatten(start_dim=-len(layer.in_shape))
    raise ValueError(f"unknown layer kind {layer.kind!r}")
