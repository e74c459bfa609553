"""One round of nested sub-model training (HeteroFL) in the simulator, batched per shape.

Devices are grouped by model size (rate and depth); each group is one sub-model shape and trains as one
batched computation of its own :class:`~tinytwin.engines.local_training.LocalTrainer` (the
batched engine), started from its slice of the global model
(:func:`tinytwin.algorithms.nested.nested_index`). What the server receives — each
device's update, through the uplink encoding of its own sub-model — is merged by
:func:`tinytwin.algorithms.nested.nested_average`. No Python loop over devices: one loop over
the (few) distinct shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.algorithms.nested import RateGroup, nested_average
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.shards import sizes_of, take
from tinytwin.fleet.model_sizes import SubModel
from tinytwin.models.params import ParamLayout
from tinytwin.wire.roundtrip import roundtrip_torch


@dataclass(frozen=True)
class ShapeTrainer:
    """The trainer of one sub-model shape and where its parameters sit in the server's vector."""

    key: str
    index: np.ndarray
    trainer: LocalTrainer
    tensor_sizes: list[int]


def shape_trainers(
    sizes: Mapping[str, SubModel],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    cfg: LocalTraining,
    seed: int,
    **trainer_options: Any,
) -> dict[str, ShapeTrainer]:
    """One batched trainer per model size, in ``sizes``' order (the module's initial weights
    are never used: every round starts from the server's slice)."""
    out = {}
    for key, sub in sizes.items():
        module = sub.trained.build(seed)
        trainer = LocalTrainer(module, ParamLayout.of(module), x_train, y_train, cfg, seed, **trainer_options)
        out[key] = ShapeTrainer(key, sub.index, trainer, sub.model.tensor_sizes)
    return out


def train_sizes(
    global_vector: torch.Tensor,
    trainers: Mapping[str, ShapeTrainer],
    round_: int,
    device_ids: np.ndarray,
    device_keys: np.ndarray,
    indices: Sequence[np.ndarray],
    encoding: str = "float32",
) -> tuple[list[RateGroup], list[str], np.ndarray]:
    """Train the listed devices, each on its own sub-model; return what the server decodes per
    size (a :class:`RateGroup` of update rows), those sizes' keys, and each device's loss.

    ``device_keys[i]`` is the size key of ``device_ids[i]``; weights are local sample counts.
    """
    groups, keys = [], []
    losses = np.full(device_ids.size, np.nan)
    g = global_vector.cpu()
    for key, st in trainers.items():
        pos = np.flatnonzero(device_keys == key)
        if pos.size == 0:
            continue
        start = g[torch.from_numpy(st.index)]
        result = st.trainer.train(start, round_, device_ids[pos], take(indices, pos))
        delta = result.params.cpu() - start
        received = roundtrip_torch(delta, encoding, tensor_sizes=st.tensor_sizes)
        weights = torch.from_numpy(sizes_of(indices)[pos]).to(g.dtype)
        groups.append(RateGroup(st.index, received, weights))
        keys.append(key)
        losses[pos] = result.train_loss
    return groups, keys, losses


def merged_update(global_vector: torch.Tensor, groups: Sequence[RateGroup]) -> torch.Tensor:
    """The nested average of the groups' update rows: a delta as long as the server's vector,
    0 where no device held a parameter."""
    out = nested_average(torch.zeros_like(global_vector.cpu()), groups)
    assert isinstance(out, torch.Tensor)
    return out


def hetero_round(
    global_vector: torch.Tensor,
    trainers: Mapping[str, ShapeTrainer],
    round_: int,
    device_ids: np.ndarray,
    device_keys: np.ndarray,
    indices: Sequence[np.ndarray],
    encoding: str = "float32",
) -> tuple[torch.Tensor, np.ndarray]:
    """:func:`train_sizes`, then :func:`merged_update`: the round's delta and each device's loss."""
    groups, _, losses = train_sizes(global_vector, trainers, round_, device_ids, device_keys, indices, encoding)
    return merged_update(global_vector, groups), losses


def size_accuracies(
    global_vector: torch.Tensor, trainers: Mapping[str, ShapeTrainer], x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """Test accuracy of each size's slice of the server's vector (the model a device of that size holds)."""
    from tinytwin.engines.evaluate import accuracy_and_loss

    out = {}
    for key, st in trainers.items():
        sub = global_vector[torch.from_numpy(st.index)].to(x.device)
        out[key] = accuracy_and_loss(st.trainer.module, st.trainer.layout, sub, x, y)[0]
    return out


class NestedFleet:
    """The simulator's side of a fleet of several model sizes: one trainer per size, the
    nested round, and each size's accuracy, bytes and energy for the results."""

    def __init__(self, exp: Any, x_train: torch.Tensor, y_train: torch.Tensor, cfg: LocalTraining, **options: Any):
        from tinytwin.engines.distill_round import ServerDistiller

        self.exp = exp
        spec = exp.spec
        self.shapes = shape_trainers(exp.models.sizes, x_train, y_train, cfg, spec.seed, **options)
        self.distiller = ServerDistiller(exp) if spec.algorithm.distillation is not None else None

    def learn(
        self, start: torch.Tensor, r: int, device_ids: np.ndarray, parts: Sequence[np.ndarray]
    ) -> tuple[torch.Tensor, np.ndarray, Any]:
        """The round's delta, each device's loss and the distillation's figures (None without)."""
        keys = self.exp.models.keys[device_ids]
        enc = self.exp.spec.algorithm.encoding
        groups, sizes, losses = train_sizes(start, self.shapes, r, device_ids, keys, parts, enc)
        delta = merged_update(start, groups)
        if self.distiller is None:
            return delta, losses, None
        delta, info = self.distiller.apply(start.cpu(), delta, groups, sizes, r)
        return delta, losses, info

    def accuracies(self, g: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Test accuracy of each size, keyed by its size key (``"0.5"``, ``"1 depth 1"``)."""
        return size_accuracies(g, self.shapes, x, y)

    def device_accuracies(
        self, g: torch.Tensor, x: torch.Tensor, y: torch.Tensor, devices: np.ndarray
    ) -> dict[int, float]:
        """Each device's accuracy on its own data, of the model it holds (its size's slice)."""
        from tinytwin.engines.evaluate import predict_correct

        out = {}
        for key, st in self.shapes.items():
            mine = devices[self.exp.models.keys[devices] == key]
            if mine.size == 0:
                continue
            sub = g[torch.from_numpy(st.index)].to(x.device)
            correct = predict_correct(st.trainer.module, st.trainer.layout, sub, x, y)[0].cpu()
            for d in mine:
                out[int(d)] = float(correct[torch.from_numpy(self.exp.parts[d])].float().mean())
        return out


def size_summary(exp: Any, energy_j: np.ndarray, device_rounds: Sequence[Mapping[str, Any]], last: dict) -> list:
    """Per model size: its groups, widths, parameters, message bytes, total bytes on the wire,
    total energy and last test accuracy (``last``: size key → accuracy)."""
    up = np.zeros(exp.fleet.num_devices, dtype=np.int64)
    down = np.zeros_like(up)
    for row in device_rounds:
        up[row["device"]] += row["bytes_up"]
        down[row["device"]] += row["bytes_down"]
    out = []
    for key, sub in exp.models.sizes.items():
        mine = exp.models.keys == key
        first = int(np.flatnonzero(mine)[0])
        out.append(
            {
                "size": key,
                "rate": sub.rate,
                "depth": sub.depth,
                "groups": [g.name for g in exp.fleet.groups if exp.models.keys[int(g.devices[0])] == key],
                "devices": int(mine.sum()),
                **sub.widths,
                "params": sub.model.num_params,
                "uplink_message_bytes": int(exp.device_uplink_bytes[first]),
                "bytes_up": int(up[mine].sum()),
                "bytes_down": int(down[mine].sum()),
                "energy_j": float(energy_j[mine].sum()),
                "test_accuracy": last.get(key),
            }
        )
    return out
