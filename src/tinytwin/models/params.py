"""Flat parameter vectors.

Algorithms see a model as one flat float32 vector (aggregation, merging, encoding and
the wire all work on flat vectors); torch needs named tensors to run the forward pass.
:class:`ParamLayout` converts between the two without copying: the named tensors are
views into the flat vector, with an optional leading device dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: a layout's sizes are needed without torch
    import torch
    from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> list[int]:
        return [prod(s) for s in self.shapes]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """The module's parameters as one flat vector (a copy)."""
        import torch

        return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of ``flat`` of shape (..., P) as tensors of shape (..., *param_shape)."""
        lead = flat.shape[:-1]
        out: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = flat[..., offset : offset + size].reshape(*lead, *shape)
            offset += size
        return out
