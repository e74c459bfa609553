"""Layer descriptions: the single source of a model's structure.

A model is a list of :class:`Layer` records with their input and output shapes worked out
once. The torch module (for the simulator), the FLOP and memory accounting (for the cost
model and the memory planner) and, later, the C firmware's layer table are all derived
from the same list, so they cannot disagree about what the model is.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

Shape = tuple[int, ...]  # per-sample shape, no batch dimension


@dataclass(frozen=True)
class Layer:
    """One layer. ``kind`` is one of: linear, conv, relu, maxpool, avgpool, flatten."""

    kind: str
    in_shape: Shape
    out_shape: Shape
    in_features: int = 0
    out_features: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    groups: int = 1

    @property
    def weight_shape(self) -> Shape | None:
        if self.kind == "linear":
            return (self.out_features, self.in_features)
        if self.kind == "conv":
            return (self.out_features, self.in_features // self.groups, self.kernel, self.kernel)
        return None

    @property
    def num_params(self) -> int:
        shape = self.weight_shape
        return 0 if shape is None else prod(shape) + self.out_features

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one sample."""
        if self.kind == "linear":
            return self.in_features * self.out_features
        if self.kind == "conv":
            per_output = (self.in_features // self.groups) * self.kernel * self.kernel
            return prod(self.out_shape) * per_output
        return 0

    @property
    def in_size(self) -> int:
        return prod(self.in_shape)

    @property
    def out_size(self) -> int:
        return prod(self.out_shape)


class LayerStack:
    """Builds a list of layers, propagating shapes as it goes."""

    def __init__(self, input_shape: Shape) -> None:
        self.input_shape = tuple(input_shape)
        self.shape: Shape = tuple(input_shape)
        self.layers: list[Layer] = []

    def _add(self, layer: Layer) -> LayerStack:
        self.layers.append(layer)
        self.shape = layer.out_shape
        return self

    def flatten(self) -> LayerStack:
        return self._add(Layer("flatten", self.shape, (prod(self.shape),)))

    def linear(self, out_features: int) -> LayerStack:
        if len(self.shape) != 1:
            self.flatten()
        n_in = self.shape[0]
        return self._add(Layer("linear", self.shape, (out_features,), in_features=n_in, out_features=out_features))

    def conv(self, out_channels: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1) -> LayerStack:
        c, h, w = self.shape
        h_out = (h + 2 * padding - kernel) // stride + 1
        w_out = (w + 2 * padding - kernel) // stride + 1
        if h_out < 1 or w_out < 1:
            raise ValueError(f"conv {kernel}x{kernel} does not fit a {h}x{w} input")
        return self._add(
            Layer(
                "conv",
                self.shape,
                (out_channels, h_out, w_out),
                in_features=c,
                out_features=out_channels,
                kernel=kernel,
                stride=stride,
                padding=padding,
                groups=groups,
            )
        )

    def relu(self) -> LayerStack:
        return self._add(Layer("relu", self.shape, self.shape))

    def maxpool(self, kernel: int = 2) -> LayerStack:
        c, h, w = self.shape
        return self._add(Layer("maxpool", self.shape, (c, h // kernel, w // kernel), kernel=kernel, stride=kernel))

    def global_avgpool(self) -> LayerStack:
        c, h, w = self.shape
        return self._add(Layer("avgpool", self.shape, (c,), kernel=h))
