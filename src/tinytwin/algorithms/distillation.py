"""Ensemble distillation at the server (FedDF, Lin et al., NeurIPS 2020).

The server holds every model it received this round (each device's sub-model after its
update). Their mean logits on an unlabeled proxy set are the ensemble's prediction; the
global model, started from the (nested) average, is trained to match it by minimising
``T² · KL(softmax(ensemble / T) ‖ softmax(student / T))`` over mini-batches of the proxy
set. Models of different widths or depths join the same ensemble: only their logits meet.

Plain SGD, batches drawn from the (seed, DISTILL, round) stream: the simulator and the
emulation's coordinator call this one function on the same inputs and reach the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tinytwin.models.params import ParamLayout
from tinytwin.rng import Stream, stream_rng


@dataclass(frozen=True)
class Teacher:
    """Models of one architecture: ``params`` ``(K, P)`` flat vectors for ``module``/``layout``."""

    module: nn.Module
    layout: ParamLayout
    params: torch.Tensor


@dataclass(frozen=True)
class Distilled:
    params: torch.Tensor  # (P,) the student after distillation
    kl: list[float]  # KL(ensemble ‖ student) on the whole proxy set, before and after each epoch


@torch.no_grad()
def ensemble_logits(teachers: Sequence[Teacher], x: torch.Tensor) -> torch.Tensor:
    """Mean logits ``(N, C)`` of every teacher model on ``x`` (each model counts once)."""
    total, count = None, 0
    for t in teachers:
        for row in t.params:
            logits = functional_call(t.module, t.layout.unflatten(row), (x,))
            total = logits if total is None else total + logits
            count += 1
    if total is None:
        raise ValueError("ensemble_logits: no teacher models")
    return total / count


def _kl(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_p, target_probs, reduction="batchmean") * temperature**2


def distill(
    module: nn.Module,
    layout: ParamLayout,
    start: torch.Tensor,
    x_proxy: torch.Tensor,
    ensemble: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    seed: int,
    round_: int,
) -> Distilled:
    """Train the student (``start``: its flat parameters) to match ``ensemble`` logits on ``x_proxy``."""
    target = F.softmax(ensemble / temperature, dim=1)
    params = start.detach().clone()
    n = x_proxy.shape[0]

    def whole_kl(p: torch.Tensor) -> float:
        with torch.no_grad():
            return float(_kl(functional_call(module, layout.unflatten(p), (x_proxy,)), target, temperature))

    history = [whole_kl(params)]
    rng = stream_rng(seed, Stream.DISTILL, round_)
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            p = params.requires_grad_(True)
            loss = _kl(functional_call(module, layout.unflatten(p), (x_proxy[idx],)), target[idx], temperature)
            (grad,) = torch.autograd.grad(loss, p)
            params = (p - lr * grad).detach()
        history.append(whole_kl(params))
    return Distilled(params, history)


def distillation_flops(forward_student: int, backward_student: int, teacher_forwards: int, n: int, epochs: int) -> int:
    """Server FLOPs of one distillation: every teacher's forward pass over the proxy set once,
    then ``epochs`` of the student's forward and backward passes (plus the KL before and after
    each epoch: one more forward pass per epoch and one at the start)."""
    return int(
        n * teacher_forwards + epochs * n * (forward_student + backward_student) + (epochs + 1) * n * forward_student
    )


__all__ = ["Distilled", "Teacher", "distill", "distillation_flops", "ensemble_logits"]
