"""What a device process trains, as plain rows its torch-free runtime reads: an MLP's linear
layers (:mod:`tinytwin.emulate.mlp_np`) or any zoo model's layer list (:mod:`tinytwin.emulate.layers_np`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinytwin.emulate import layers_np, mlp_np
from tinytwin.engines.batched_mlp import BatchedMLPGrad
from tinytwin.engines.experiment import Experiment
from tinytwin.errors import TinyTwinError
from tinytwin.models.zoo import ModelDef


def mlp_rows(exp: Experiment) -> list[list[Any]]:
    return rows_of_model(exp.model)


def rows_of_model(model: ModelDef) -> list[list[Any]]:
    """The MLP ``model``'s linear layers as ``[w_offset, b_offset, n_in, n_out, relu_after]`` rows."""
    fast = BatchedMLPGrad.for_layers(model.layers)
    if fast is None:
        raise TinyTwinError(
            f"emulate supports MLP models only for now in this kind of run (centralized runs also "
            f"train CNNs); {model.name} has other layers"
        )
    return [[l.w_offset, l.b_offset, l.n_in, l.n_out, l.relu_after] for l in fast.linears]


def model_rows(exp: Experiment) -> tuple[list[list[Any]] | None, list[dict[str, Any]] | None]:
    """What a centralized device trains: (MLP rows for ``mlp_np``, None), or for any other zoo
    model (CNNs) (None, the layer list for ``layers_np``) — issue #5."""
    return rows_of_any(exp.model)


def rows_of_any(model: ModelDef) -> tuple[list[list[Any]] | None, list[dict[str, Any]] | None]:
    """:func:`model_rows` of any zoo model (e.g. one size of a fleet of several)."""
    if BatchedMLPGrad.for_layers(model.layers) is not None:
        return rows_of_model(model), None
    try:
        return None, layers_np.describe(model.layers)
    except ValueError as exc:
        raise TinyTwinError(f"emulate: model {model.name}: {exc}") from None


def evaluate_rows(
    rows: tuple[list[list[Any]] | None, list[dict[str, Any]] | None], flat: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[float, float]:
    """Test accuracy and loss of ``flat`` for a model given as :func:`rows_of_any` rows."""
    linears, layers = rows
    if linears is not None:
        return mlp_np.evaluate(mlp_np.linears_from(linears), flat, x, y)
    assert layers is not None
    return layers_np.evaluate(layers_np.Net.from_rows(layers), flat, x, y)
