"""The model zoo: small networks that train on microcontrollers.

Each architecture is a function from (input shape, classes, options) to a layer list
(:mod:`tinytwin.models.layers`); :func:`build_module` turns any layer list into a torch
module whose parameter order is the layer order, so a flat parameter vector means the same
thing in the simulator, the emulator's numpy runtime and the C firmware.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Any

from tinytwin.models.layers import Layer, LayerStack, Shape
from tinytwin.models.wideresnet import wideresnet_layers

if TYPE_CHECKING:
    from tinytwin.models.torch_module import LayerModule


def mlp_layers(input_shape: Shape, num_classes: int, hidden: Sequence[int] = (32,)) -> list[Layer]:
    """Fully connected network: flatten, then ``hidden`` widths with ReLU, then the classifier."""
    stack = LayerStack(input_shape).flatten()
    for width in hidden:
        stack.linear(int(width)).relu()
    return stack.linear(num_classes).layers


def lenet5_layers(
    input_shape: Shape, num_classes: int, channels: Sequence[int] = (6, 16), fc: Sequence[int] = (120, 84)
) -> list[Layer]:
    """LeNet-5-like CNN (seed 004): conv 6 @5x5, pool, conv 16 @5x5, pool, fc 120, fc 84.

    The first convolution pads by 2 (28x28 stays 28x28, as in the classic net on MNIST);
    the second pads by 2 only when the map is too small for an unpadded 5x5 (8x8 digits).
    """
    stack = LayerStack(input_shape)
    stack.conv(int(channels[0]), 5, padding=2).relu().maxpool(2)
    second_pad = 0 if min(stack.shape[1:]) >= 9 else 2
    stack.conv(int(channels[1]), 5, padding=second_pad).relu().maxpool(2)
    for width in fc:
        stack.linear(int(width)).relu()
    return stack.linear(num_classes).layers


def dscnn_layers(input_shape: Shape, num_classes: int, channels: Sequence[int] = (8, 16, 32)) -> list[Layer]:
    """Tiny depthwise-separable CNN (MobileNet-style blocks, as used for keyword spotting on MCUs).

    conv 3x3 -> [depthwise 3x3 + pointwise 1x1] per further width, pooling after each
    block while the map is larger than 4x4, then global average pooling and the classifier.
    """
    stack = LayerStack(input_shape)
    stack.conv(int(channels[0]), 3, padding=1).relu()
    for width in channels[1:]:
        c = stack.shape[0]
        stack.conv(c, 3, padding=1, groups=c).relu()
        stack.conv(int(width), 1).relu()
        if min(stack.shape[1:]) > 4:
            stack.maxpool(2)
    return stack.global_avgpool().linear(num_classes).layers


ARCHITECTURES: dict[str, Callable[..., list[Layer]]] = {
    "mlp": mlp_layers,
    "lenet5": lenet5_layers,
    "dscnn": dscnn_layers,
    "wideresnet": wideresnet_layers,
}


@dataclass(frozen=True)
class ModelDef:
    """A concrete model: its name, layer list and input/output sizes."""

    name: str
    layers: tuple[Layer, ...]
    input_shape: Shape
    num_classes: int

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    @property
    def tensor_sizes(self) -> list[int]:
        """Sizes of the parameter tensors in flat order (weight, bias per layer; a block's in its order)."""
        return [prod(shape) for layer in self.layers for shape in layer.param_shapes]

    def build(self, seed: int) -> LayerModule:
        """A freshly initialised torch module; the same seed gives the same weights."""
        import torch

        from tinytwin.models.torch_module import LayerModule

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return LayerModule(self.layers)


def make_model(name: str, input_shape: Shape, num_classes: int, **options: object) -> ModelDef:
    """Build the :class:`ModelDef` of architecture ``name`` with its options (e.g. ``hidden``)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    layers = ARCHITECTURES[name](tuple(input_shape), num_classes, **options)
    return ModelDef(name, tuple(layers), tuple(input_shape), num_classes)


def __getattr__(name: str) -> Any:
    """``LayerModule`` on first use: importing the zoo (model sizes, memory plans) needs no torch."""
    if name == "LayerModule":
        from tinytwin.models.torch_module import LayerModule

        return LayerModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
