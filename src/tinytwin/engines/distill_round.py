"""The server's distillation step of a round (FedDF), shared by the simulator and the emulation.

After nested averaging, the server distils the ensemble of every model it received
(:mod:`tinytwin.algorithms.distillation`) into the global model on the proxy set. It pays
for it on its own profile (``algorithm.distillation.server_profile``): the round lasts the
distillation's compute time longer, and the energy is the profile's active power over that
time. Each round's figures go to the events table (kind ``distillation``) and to the twin's
checkpointed state, which the summary totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms.distillation import Teacher, distill, distillation_flops, ensemble_logits
from tinytwin.algorithms.nested import RateGroup
from tinytwin.errors import SpecError
from tinytwin.fleet.catalog import load_device_catalog
from tinytwin.models.accounting import backward_flops, forward_flops
from tinytwin.models.params import ParamLayout

EVENT_KIND = "distillation"


@dataclass(frozen=True)
class DistillRound:
    """One round's distillation: the KL before and after each epoch, the server's time and energy."""

    kl: list[float]
    server_s: float
    energy_j: float

    def log_row(self) -> list[float]:
        """What the twin's checkpointed state keeps of the round (:func:`distillation_summary`)."""
        return [self.kl[0], self.kl[-1], self.server_s, self.energy_j]

    def event(self, r: int, t0: float) -> dict[str, Any]:
        detail = (
            f"KL {self.kl[0]:.4f} -> {self.kl[-1]:.4f} over {len(self.kl) - 1} epoch(s); "
            f"server {self.server_s:.3f} s, {self.energy_j:.3f} J"
        )
        return {"round": r, "sim_time_s": t0, "device": None, "kind": EVENT_KIND, "detail": detail}


def server_profile(cfg: Any) -> Any:
    """The catalog profile the server distils on; an unknown name is a spec error."""
    catalog = load_device_catalog()
    if cfg.server_profile not in catalog:
        raise SpecError(
            "algorithm.distillation.server_profile",
            f"unknown profile {cfg.server_profile!r}; choose one of `tinytwin devices`",
        )
    return catalog[cfg.server_profile]


class ServerDistiller:
    """The modules of every model size, the proxy set and the server's profile of one run."""

    def __init__(self, exp: Any) -> None:
        self.cfg = exp.spec.algorithm.distillation
        self.profile = server_profile(self.cfg)
        self.seed = exp.spec.seed
        self.x = torch.from_numpy(np.ascontiguousarray(exp.proxy_x))
        self.models = {}
        for key, sub in exp.models.sizes.items():
            module = exp.module if sub.trained is exp.model else sub.trained.build(exp.spec.seed)
            self.models[key] = (module, ParamLayout.of(module), sub.model)
        self.student = (exp.module, exp.layout, exp.model)  # the full model, even when no device trains it
        self.global_size = exp.model.num_params
        self.heads = [head_student(exp, head) for head in exp.models.heads]  # each depth's prototype

    def apply(
        self, g: torch.Tensor, delta: torch.Tensor, groups: Sequence[RateGroup], keys: Sequence[str], r: int
    ) -> tuple[torch.Tensor, DistillRound]:
        """The distilled update (relative to the server's vector ``g``) from the averaged
        ``delta`` and the received ``groups`` (each ``keys[i]``'s devices' update rows). The
        global model is the student; shallower members' heads keep their averages."""
        teachers, teacher_flops = [], 0
        for grp, key in zip(groups, keys):
            module, layout, model = self.models[key]
            rows = torch.as_tensor(grp.updates)
            teachers.append(Teacher(module, layout, g[torch.from_numpy(grp.index)] + rows))
            teacher_flops += rows.shape[0] * forward_flops(model.layers, model.num_classes)
        ensemble = ensemble_logits(teachers, self.x)
        module, layout, model = self.student
        p = self.global_size
        out = self._distil(module, layout, (g + delta)[:p], ensemble, r)
        flops = self._student_flops(model)
        distilled = delta.clone()
        distilled[:p] = out.params - g[:p]
        for module, layout, member, index, head_size in self.heads:
            # the shallower prototype on the distilled shared layers; only its classifier is kept
            new = g + distilled
            d = self._distil(module, layout, new[torch.from_numpy(index)], ensemble, r)
            head = torch.from_numpy(index[-head_size:])
            distilled[head] = d.params[-head_size:] - g[head]
            flops += self._student_flops(member)
        server_s = (flops + teacher_flops * len(self.x)) / self.profile.flops_per_s
        return distilled, DistillRound(out.kl, server_s, server_s * self.profile.power.active_w)

    def _distil(self, module: Any, layout: Any, start: torch.Tensor, ensemble: torch.Tensor, r: int) -> Any:
        c = self.cfg
        return distill(
            module,
            layout,
            start,
            self.x,
            ensemble,
            epochs=c.epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            temperature=c.temperature,
            seed=self.seed,
            round_=r,
        )

    def _student_flops(self, model: Any) -> int:
        fwd = forward_flops(model.layers, model.num_classes)
        return distillation_flops(fwd, backward_flops(model.layers, model.num_classes), 0, len(self.x), self.cfg.epochs)


def head_student(exp: Any, head: Any) -> tuple[Any, Any, Any, np.ndarray, int]:
    """The full-width member of ``head``'s depth, as distillation trains it: its module, layout,
    model, server-vector positions, and the size of its classifier (the last positions)."""
    from tinytwin.fleet.model_sizes import sub_model

    member = sub_model(exp.model, exp.spec.model.options(), 1.0, head.depth, head)
    module = member.trained.build(exp.spec.seed)
    return module, ParamLayout.of(module), member.model, member.index, head.size


def distillation_summary(log: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Totals of a run's distillation rounds (``log``: per round, KL before and after, server
    seconds and joules, as the twins' states carry them); ``{}`` without distillation."""
    if not log:
        return {}
    return {
        "distillation": {
            "rounds": len(log),
            "server_s": float(sum(row[2] for row in log)),
            "server_energy_j": float(sum(row[3] for row in log)),
            "kl_first_round": [float(log[0][0]), float(log[0][1])],
            "kl_last_round": [float(log[-1][0]), float(log[-1][1])],
        }
    }
