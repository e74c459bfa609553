"""The centralized coordinator's side of a fleet of several model sizes (issue #11).

Each device process is an ordinary device that happens to train a narrower model (an MLP's
rows or a CNN's layer list): its configuration names its own sub-model, parameter count and
tensor sizes, and it receives its slice of the global model
(:func:`tinytwin.algorithms.nested.nested_index`).
The coordinator decodes each update with the sender's shape and merges them with the same
:func:`~tinytwin.algorithms.nested.nested_average` the simulator calls. A fleet of one size
goes through :func:`~tinytwin.algorithms.aggregators.aggregate_spec`, exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms.aggregators import aggregate_spec
from tinytwin.algorithms.nested import RateGroup, nested_average
from tinytwin.emulate.model_rows import evaluate_rows, rows_of_any
from tinytwin.engines.distill_round import DistillRound, ServerDistiller
from tinytwin.engines.experiment import Experiment
from tinytwin.wire import encoding as enc


class EmulatedSizes:
    """Per size, the model rows a device trains and its slice of the global model."""

    def __init__(self, exp: Experiment, coordinator: Any = None) -> None:
        """``coordinator`` (a :class:`~tinytwin.emulate.frame_checks.Coordinator`) learns each
        device's shape, to decode its updates."""
        self.exp = exp
        self.models = exp.models
        self.heterogeneous = exp.models.heterogeneous
        distill = exp.spec.algorithm.distillation is not None
        self.nested = self.heterogeneous or distill  # merged by nested averaging (and distillation)
        sizes = exp.models.sizes.items() if self.nested else ()
        self.rows = {k: rows_of_any(sub.trained) for k, sub in sizes}  # as trained and held (with a scaler's layers)
        self.distiller = ServerDistiller(exp) if distill else None
        self.distilled: DistillRound | None = None  # this round's, until take_distilled
        if coordinator is not None:
            coordinator.shapes = self.shapes()

    def key_of(self, d: int) -> str:
        return str(self.models.keys[d])

    def device_model(self, d: int, full: dict[str, Any]) -> dict[str, Any]:
        """The ``linears``/``layers`` entries of device ``d``'s configuration (``full``: the model's)."""
        if not self.nested:
            return full
        linears, layers = self.rows[self.key_of(d)]
        return {"linears": linears, "layers": layers}

    def shapes(self) -> dict[int, tuple[int, list[int]]]:
        """Each device's (parameter count, tensor sizes), for the coordinator's frame checks."""
        if not self.heterogeneous:
            return {}
        out = {}
        for d in range(self.models.keys.size):
            sub = self.models.of(d).model
            out[d] = (sub.num_params, list(sub.tensor_sizes))
        return out

    def payloads(self, g: torch.Tensor, encoding: str) -> dict[str, bytes]:
        """The encoded model each size receives: its slice of the server's vector ``g``."""
        flat = g.numpy()
        return {
            key: enc.encode(flat[sub.index], encoding, tensor_sizes=sub.model.tensor_sizes)
            for key, sub in self.models.sizes.items()
        }

    def aggregate(
        self, aggregator: Any, updates: Mapping[int, np.ndarray], completed: np.ndarray, g: torch.Tensor, r: int
    ) -> tuple[torch.Tensor | None, str | None]:
        """The merged update of the ``completed`` devices, weighted by their sample counts
        (nested averaging, then the server's distillation, for several sizes or FedDF)."""
        weights = self.exp.num_samples[completed]
        if not self.nested:
            received = torch.from_numpy(np.stack([updates[int(d)] for d in completed]))
            return aggregate_spec(aggregator, received, torch.from_numpy(weights).to(received.dtype))
        groups, keys = [], []
        for key, sub in self.models.sizes.items():
            mine = np.flatnonzero(self.models.keys[completed] == key)
            if mine.size:
                rows = torch.from_numpy(np.stack([updates[int(completed[i])] for i in mine]))
                groups.append(RateGroup(sub.index, rows, torch.from_numpy(weights[mine]).to(rows.dtype)))
                keys.append(key)
        merged = nested_average(torch.zeros(self.models.server_size, dtype=torch.float32), groups)
        assert isinstance(merged, torch.Tensor)
        if self.distiller is None:
            return merged, None
        merged, self.distilled = self.distiller.apply(g, merged, groups, keys, r)
        return merged, None

    def take_distilled(self, r: int, t0: float, events: list[dict[str, Any]]) -> tuple[list[list[float]], float]:
        """This round's distillation, once: its event appended to ``events``, its row for the
        state's log (``[]`` when the server did not distil) and the seconds it added to the round."""
        info, self.distilled = self.distilled, None
        if info is None:
            return [], 0.0
        events.append(info.event(r, t0))
        return [info.log_row()], info.server_s

    def accuracies(self, g: torch.Tensor, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Test accuracy of each size's slice of ``g`` (numpy, as the devices compute)."""
        flat = g.numpy()
        return {key: evaluate_rows(self.rows[key], flat[sub.index], x, y)[0] for key, sub in self.models.sizes.items()}


def model_sizes_summary(emu: Any, state: Any) -> dict[str, Any]:
    """``{"model_sizes": [...]}`` of a run of several sizes (the simulator's figures, the last
    accuracies measured on the final global model), ``{}`` for one size."""
    if not emu.sizes.nested:
        return {}
    from tinytwin.engines.hetero_round import size_summary

    last = emu.sizes.accuracies(state.global_params, emu.x_test, emu.y_test)
    rows = emu.store.device_rounds(emu.run_id)
    return {"model_sizes": size_summary(emu.exp, state.energy_j, rows, last)}
