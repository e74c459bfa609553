"""One round of nested sub-model training (HeteroFL) in the simulator, batched per shape.

Devices are grouped by model rate; each group is one sub-model shape and trains as one
batched computation of its own :class:`~tinytwin.engines.local_training.LocalTrainer` (the
batched MLP engine), started from its slice of the global model
(:func:`tinytwin.algorithms.nested.submodel_index`). The groups' models are then merged by
:func:`tinytwin.algorithms.nested.nested_average`. No Python loop over devices: one loop over
the (few) distinct shapes. Not yet wired into ``tinytwin run`` (issue #11).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.algorithms.nested import RateGroup, nested_average, sub_widths, submodel_index
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.models.params import ParamLayout
from tinytwin.models.zoo import make_model


@dataclass(frozen=True)
class ShapeTrainer:
    """The trainer of one sub-model shape and where its parameters sit in the global vector."""

    rate: float
    index: np.ndarray
    trainer: LocalTrainer


def shape_trainers(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int],
    rates: Sequence[float],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    cfg: LocalTraining,
    seed: int,
) -> dict[float, ShapeTrainer]:
    """One batched trainer per distinct rate (the module's initial weights are never used:
    every round starts from the global model's slice)."""
    n_in = int(np.prod(input_shape))
    out = {}
    for rate in sorted(set(float(r) for r in rates), reverse=True):
        model = make_model("mlp", input_shape, num_classes, hidden=sub_widths(hidden, rate))
        module = model.build(seed)
        trainer = LocalTrainer(module, ParamLayout.of(module), x_train, y_train, cfg, seed)
        out[rate] = ShapeTrainer(rate, submodel_index(n_in, hidden, num_classes, rate), trainer)
    return out


def hetero_round(
    global_vector: torch.Tensor,
    trainers: dict[float, ShapeTrainer],
    round_: int,
    device_ids: np.ndarray,
    device_rates: np.ndarray,
    indices: list[np.ndarray],
) -> torch.Tensor:
    """Train the listed devices, each on its own sub-model, and return the nested average.

    ``device_rates[i]`` is the rate of ``device_ids[i]``; weights are local sample counts.
    """
    groups = []
    for rate, st in trainers.items():
        pos = np.flatnonzero(device_rates == rate)
        if pos.size == 0:
            continue
        start = global_vector[torch.from_numpy(st.index)]
        result = st.trainer.train(start, round_, device_ids[pos], [indices[i] for i in pos])
        weights = torch.tensor([len(indices[i]) for i in pos], dtype=global_vector.dtype)
        groups.append(RateGroup(st.index, result.params, weights))
    out = nested_average(global_vector, groups)
    assert isinstance(out, torch.Tensor)
    return out
