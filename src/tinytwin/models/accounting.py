"""Exact parameter, FLOP and training-memory accounting, derived from the layer list.

The numbers here feed the cost model (compute time = FLOPs / effective throughput) and the
memory planner (does local training fit the device's RAM?). They are counted, not
measured, with the conventions below, documented in docs/cost-model.md:

- a multiply-accumulate is 2 FLOPs; bias add, ReLU, pooling comparisons are 1 FLOP per element;
- backward of a linear/conv layer = weight gradient (2·MACs) + bias gradient + input gradient
  (2·MACs), except for the first parameterised layer, whose input gradient is not needed;
- softmax cross-entropy: 4 FLOPs per class forward, 1 per class backward;
- group norm: 7 FLOPs per element forward (mean 1, variance 2, normalise 2, scale and shift 2),
  8 backward; a residual sum 1 per element each way; a residual block counts as its parts
  (:func:`tinytwin.models.layers.block_parts`), convolutions without bias add no bias FLOPs;
- float32 everywhere (4 bytes per value); training stores every layer's output for backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tinytwin.models.layers import Layer, expand_blocks

BYTES_PER_VALUE = 4  # float32


def forward_flops(layers: Sequence[Layer], num_classes: int) -> int:
    """FLOPs of one forward pass for one sample, including the loss."""
    total = 0
    for layer in expand_blocks(layers):
        if layer.kind in ("linear", "conv"):
            total += 2 * layer.macs + (layer.out_size if layer.bias else 0)
        elif layer.kind == "groupnorm":
            total += 7 * layer.out_size
        elif layer.kind in ("relu", "add", "scale"):
            total += layer.out_size
        elif layer.kind == "maxpool":
            total += layer.out_size * (layer.kernel * layer.kernel - 1)
        elif layer.kind == "avgpool":
            total += layer.in_size + layer.out_size
    return total + 4 * num_classes


def backward_flops(layers: Sequence[Layer], num_classes: int) -> int:
    """FLOPs of one backward pass for one sample (gradients of weights, biases and inputs)."""
    total = num_classes
    layers = expand_blocks(layers)
    first_param = next((i for i, layer in enumerate(layers) if layer.num_params), None)
    for i, layer in enumerate(layers):
        if layer.kind in ("linear", "conv"):
            total += 2 * layer.macs + (layer.out_size if layer.bias else 0)
            if i != first_param:
                total += 2 * layer.macs
        elif layer.kind == "groupnorm":
            total += 8 * layer.out_size
        elif layer.kind in ("relu", "maxpool", "add", "scale"):
            total += layer.out_size
        elif layer.kind == "avgpool":
            total += layer.in_size
    return total


def optimizer_step_flops(num_params: int, optimizer: str, momentum: float, weight_decay: float, prox_mu: float) -> int:
    """FLOPs of one optimizer step over all parameters."""
    per_param = 2  # w -= lr * g
    if weight_decay:
        per_param += 2
    if prox_mu:
        per_param += 3  # g += mu * (w - w_global)
    if optimizer == "adam":
        per_param += 10
    elif momentum:
        per_param += 2
    return per_param * num_params


def activation_values(layers: Sequence[Layer]) -> int:
    """Values stored per sample for backward: the input plus every layer's output."""
    if not layers:
        return 0
    return layers[0].in_size + sum(layer.out_size for layer in expand_blocks(layers))


def largest_activation(layers: Sequence[Layer]) -> int:
    return max([layers[0].in_size] + [layer.out_size for layer in expand_blocks(layers)]) if layers else 0


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of RAM that local training needs, by component."""

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    receive_buffer: int
    send_buffer: int
    components: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer_state
            + self.activations
            + self.receive_buffer
            + self.send_buffer
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer_state": self.optimizer_state,
            "activations": self.activations,
            "receive_buffer": self.receive_buffer,
            "send_buffer": self.send_buffer,
        }


def training_memory(
    layers: Sequence[Layer],
    batch_size: int,
    *,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    prox_mu: float = 0.0,
    receive_bytes: int = 0,
    send_bytes: int = 0,
) -> TrainingMemory:
    """RAM needed to train ``layers`` at ``batch_size``.

    Activations: the stored forward values of the batch plus two gradient buffers the size
    of the largest activation (backward ping-pongs between them). Optimizer state: momentum
    (1 value per parameter), Adam (2), plus FedProx's copy of the global model (1).
    Buffers: the encoded frames received (global model) and sent (update).
    """
    n = sum(layer.num_params for layer in layers)
    state_values = 0
    if optimizer == "adam":
        state_values += 2 * n
    elif momentum:
        state_values += n
    if prox_mu:
        state_values += n
    activations = batch_size * (activation_values(layers) + 2 * largest_activation(layers))
    return TrainingMemory(
        weights=n * BYTES_PER_VALUE,
        gradients=n * BYTES_PER_VALUE,
        optimizer_state=state_values * BYTES_PER_VALUE,
        activations=activations * BYTES_PER_VALUE,
        receive_buffer=receive_bytes,
        send_buffer=send_bytes,
    )
