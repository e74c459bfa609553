"""Evaluating many devices' models at once (one ``vmap`` over a (D, P) parameter matrix)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from tinytwin.models.params import ParamLayout


@torch.no_grad()
def evaluate_many(
    module: nn.Module,
    layout: ParamLayout,
    params: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    device_chunk: int = 32,
    sample_chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and mean cross-entropy of each row of ``params`` (D, P) on ``(x, y)`` (computed on
    ``params``' device, where ``x`` and ``y`` must be): two (D,) CPU tensors."""
    d, dev = params.shape[0], params.device
    if d == 0 or len(x) == 0:
        return torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)

    def logits(p: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(module, layout.unflatten(p), (xb,))

    batched = vmap(logits, in_dims=(0, None))
    correct = torch.zeros(d, dtype=torch.float64, device=dev)
    loss = torch.zeros(d, dtype=torch.float64, device=dev)
    for lo in range(0, d, device_chunk):
        p = params[lo : lo + device_chunk]
        for s in range(0, len(x), sample_chunk):
            xb, yb = x[s : s + sample_chunk], y[s : s + sample_chunk]
            out = batched(p, xb)  # (d, n, C)
            correct[lo : lo + len(p)] += (out.argmax(dim=2) == yb[None, :]).sum(dim=1).to(torch.float64)
            ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.repeat(len(p)), reduction="none")
            loss[lo : lo + len(p)] += ce.reshape(len(p), -1).sum(dim=1).to(torch.float64)
    return (correct / len(x)).cpu(), (loss / len(x)).cpu()
