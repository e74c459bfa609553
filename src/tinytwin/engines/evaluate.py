"""Evaluating models on a dataset in large batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tinytwin.models.params import ParamLayout


@torch.no_grad()
def predict_correct(
    module: nn.Module, layout: ParamLayout, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample correctness (bool) and cross-entropy of one model over ``x``."""
    params = layout.unflatten(flat)
    correct, losses = [], []
    for lo in range(0, len(x), chunk):
        logits = functional_call(module, params, (x[lo : lo + chunk],))
        target = y[lo : lo + chunk]
        correct.append(logits.argmax(dim=1) == target)
        losses.append(F.cross_entropy(logits, target, reduction="none"))
    return torch.cat(correct), torch.cat(losses)


def accuracy_and_loss(
    module: nn.Module, layout: ParamLayout, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    correct, loss = predict_correct(module, layout, flat, x, y)
    return float(correct.float().mean()), float(loss.mean())
