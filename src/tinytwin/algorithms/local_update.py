"""Local training: the loss and optimizer step every device runs, defined once.

Everything works on flat parameter vectors with an optional leading device dimension,
so one function serves a single device (the reference loop) and a whole fleet (the
batched engine): a device with no batch at a step passes ``active = 0`` and is left
untouched, which is how devices with unequal dataset sizes share one computation.

- loss = mean cross-entropy over the batch's real samples
  (+ FedProx's (mu/2)·||w − w_global||², Li et al. 2020);
- SGD with momentum and L2 weight decay (PyTorch's semantics: g ← g + λw;
  m ← μm + g; w ← w − ηm);
- Adam (PyTorch's defaults β = (0.9, 0.999), ε = 1e-8, bias-corrected per device step count).

Optimizer state is fresh at the start of every round, as on a device that frees it
between rounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tinytwin.algorithms.local_config import ADAM_BETAS, ADAM_EPS, LocalTraining
from tinytwin.models.params import ParamLayout

__all__ = ["ADAM_BETAS", "ADAM_EPS", "LocalTraining", "batch_loss", "init_optimizer_state", "optimizer_step"]


def batch_loss(
    module: nn.Module,
    layout: ParamLayout,
    flat: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    anchor: torch.Tensor,
    prox_mu: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one device on one batch, and the summed cross-entropy of its real samples.

    ``mask`` marks real samples (1) versus padding (0); the loss is normalised by the real
    count so a short last batch is weighted exactly as a per-device data loader would.
    """
    logits = functional_call(module, layout.unflatten(flat), (x,))
    ce = F.cross_entropy(logits, y, reduction="none") * mask
    ce_sum = ce.sum()
    loss = ce_sum / mask.sum().clamp_min(1.0)
    if prox_mu:
        loss = loss + 0.5 * prox_mu * ((flat - anchor) ** 2).sum()
    return loss, ce_sum.detach()


def init_optimizer_state(params: torch.Tensor, cfg: LocalTraining) -> dict[str, torch.Tensor]:
    """Fresh optimizer state for ``params`` of shape (..., P)."""
    if cfg.optimizer == "adam":
        lead = params.shape[:-1]
        return {
            "m": torch.zeros_like(params),
            "v": torch.zeros_like(params),
            "t": torch.zeros(lead + (1,), dtype=params.dtype, device=params.device),
        }
    if cfg.momentum:
        return {"m": torch.zeros_like(params)}
    return {}


def optimizer_step(
    params: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, torch.Tensor],
    lr: torch.Tensor,
    active: torch.Tensor,
    cfg: LocalTraining,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step; ``lr`` and ``active`` broadcast against params (shape (..., 1)).

    Devices with ``active == 0`` keep their parameters and state unchanged.
    """
    if cfg.weight_decay:
        grad = grad + cfg.weight_decay * params
    new_state = dict(state)
    if cfg.optimizer == "adam":
        b1, b2 = ADAM_BETAS
        t = state["t"] + active
        m = torch.where(active > 0, b1 * state["m"] + (1 - b1) * grad, state["m"])
        v = torch.where(active > 0, b2 * state["v"] + (1 - b2) * grad * grad, state["v"])
        t_safe = t.clamp_min(1.0)
        m_hat = m / (1 - b1**t_safe)
        v_hat = v / (1 - b2**t_safe)
        direction = m_hat / (v_hat.sqrt() + ADAM_EPS)
        new_state.update(m=m, v=v, t=t)
    elif cfg.momentum:
        m = torch.where(active > 0, cfg.momentum * state["m"] + grad, state["m"])
        direction = m
        new_state["m"] = m
    else:
        direction = grad
    return torch.addcmul(params, lr * active, direction, value=-1.0), new_state
