"""Update norm bounds: one poisoned update must not move the global model arbitrarily far.

Applied by :func:`tinytwin.algorithms.aggregators.aggregate` to the round's received deltas
before the aggregation rule, so every twin bounds the same way. The bound is either absolute
(``max_norm``) or relative to the round (``multiple`` × the median L2 norm of the received
updates: robust to a minority of attackers, and it follows the natural shrinking of updates
as training converges). ``clip`` scales an update above the bound down onto it; ``reject``
drops it (its weight with it). A non-finite norm is above every bound.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["apply_norm_bound", "norm_bound_of"]


def norm_bound_of(norms: Tensor, multiple: float | None, max_norm: float | None) -> float:
    """The round's bound: ``max_norm``, or ``multiple`` × the median of the finite norms."""
    if max_norm is not None:
        return float(max_norm)
    assert multiple is not None
    finite = norms[torch.isfinite(norms)]
    if finite.numel() == 0:
        return 0.0
    return float(multiple) * float(finite.median())  # the lower median for an even count (torch's)


def apply_norm_bound(updates: Tensor, weights: Tensor | None, bound: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
    """The updates (and weights) after the bound ``{mode, multiple, max_norm}``; ValueError if none is left."""
    norms = torch.linalg.vector_norm(updates.double(), dim=1)
    limit = norm_bound_of(norms, bound.get("multiple"), bound.get("max_norm"))
    inside = torch.isfinite(norms) & (norms <= limit)
    if bound.get("mode", "clip") == "reject":
        if not bool(inside.any()):
            raise ValueError(f"the norm bound ({limit:.4g}) rejected every update")
        return updates[inside], (weights[inside] if weights is not None else None)
    scale = torch.where(inside, torch.ones_like(norms), limit / norms.clamp_min(1e-300))
    scale = torch.where(torch.isfinite(norms), scale, torch.zeros_like(scale))  # a NaN/Inf row counts for nothing
    clipped = torch.where(torch.isfinite(updates), updates, torch.zeros_like(updates)) * scale[:, None].to(
        updates.dtype
    )
    return clipped, weights
