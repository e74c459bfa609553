"""Layer descriptions: the single source of a model's structure.

A model is a list of :class:`Layer` records with their input and output shapes worked out
once. The torch module (for the simulator), the FLOP and memory accounting (for the cost
model and the memory planner) and, later, the C firmware's layer table are all derived
from the same list, so they cannot disagree about what the model is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

Shape = tuple[int, ...]  # per-sample shape, no batch dimension


@dataclass(frozen=True)
class Layer:
    """One layer. ``kind`` is one of: linear, conv, relu, maxpool, avgpool, flatten, groupnorm,
    add, resblock, scale.

    ``groupnorm`` normalises each sample over ``groups`` channel groups (a scale and a shift
    per channel); ``resblock`` is a residual basic block (:func:`block_parts` lists what it is
    made of; ``add`` is its skip connection's sum). ``bias`` is False for convolutions
    followed by a normalisation, as in ResNets. ``scale`` multiplies by ``factor`` (HeteroFL's
    scaler: a width member's training graph, :func:`tinytwin.models.families.with_scaler`).
    """

    kind: str
    in_shape: Shape
    out_shape: Shape
    in_features: int = 0
    out_features: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True
    factor: float = 1.0

    @property
    def weight_shape(self) -> Shape | None:
        if self.kind == "linear":
            return (self.out_features, self.in_features)
        if self.kind == "conv":
            return (self.out_features, self.in_features // self.groups, self.kernel, self.kernel)
        return None

    @property
    def param_shapes(self) -> list[Shape]:
        """Shapes of the parameter tensors, in the order the torch module registers them."""
        if self.kind == "resblock":
            return [shape for part in block_parts(self) for shape in part.param_shapes]
        if self.kind == "groupnorm":
            return [(self.out_features,), (self.out_features,)]
        shape = self.weight_shape
        if shape is None:
            return []
        return [shape, (self.out_features,)] if self.bias else [shape]

    @property
    def num_params(self) -> int:
        return sum(prod(shape) for shape in self.param_shapes)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one sample."""
        if self.kind == "resblock":
            return sum(part.macs for part in block_parts(self))
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

    def conv(
        self, out_channels: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1, bias: bool = True
    ) -> LayerStack:
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
                bias=bias,
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

    def groupnorm(self, groups: int) -> LayerStack:
        c = self.shape[0]
        if c % groups:
            raise ValueError(f"group norm: {c} channels do not split into {groups} groups")
        return self._add(Layer("groupnorm", self.shape, self.shape, in_features=c, out_features=c, groups=groups))

    def resblock(self, out_channels: int, stride: int, norm_groups: int) -> LayerStack:
        """A residual basic block (two 3x3 convolutions; see :func:`block_parts`)."""
        c, h, w = self.shape
        out = (out_channels, (h - 1) // stride + 1, (w - 1) // stride + 1)
        return self._add(
            Layer(
                "resblock", self.shape, out, in_features=c, out_features=out_channels, kernel=3, stride=stride,
                padding=1, groups=norm_groups, bias=False,
            )
        )  # fmt: skip


def block_parts(block: Layer) -> list[Layer]:
    """What a ``resblock`` computes, in order, as plain layers (its accounting is theirs).

    Main path: conv 3x3 (stride) → group norm → ReLU → conv 3x3 → group norm; shortcut:
    identity, or conv 1x1 (stride) → group norm when the shape changes; then the sum
    (``add``) and a ReLU (the post-activation basic block of He et al., as in seed 004's
    Table 7). ``block.groups`` is the group count of each of its normalisations.
    """
    cout, g = block.out_features, block.groups
    main = LayerStack(block.in_shape).conv(cout, 3, stride=block.stride, padding=1, bias=False).groupnorm(g).relu()
    main.conv(cout, 3, padding=1, bias=False).groupnorm(g)
    parts = list(main.layers)
    if block.in_shape != block.out_shape:
        parts += LayerStack(block.in_shape).conv(cout, 1, stride=block.stride, bias=False).groupnorm(g).layers
    parts.append(Layer("add", block.out_shape, block.out_shape))
    parts.append(Layer("relu", block.out_shape, block.out_shape))
    return parts


def expand_blocks(layers: Sequence[Layer]) -> list[Layer]:
    """``layers`` with every ``resblock`` replaced by its :func:`block_parts`."""
    out: list[Layer] = []
    for layer in layers:
        out += block_parts(layer) if layer.kind == "resblock" else [layer]
    return out
