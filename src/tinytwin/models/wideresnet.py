"""The WideResNet of seed 004 §4.1 (Table 7): the 8.66 M-parameter CIFAR-100 model it trained
with Flower on Jetson and Raspberry Pi boards.

Table 7 lists a 16-channel 3x3 stem, three stages of residual basic blocks at 16, 160 and
320 channels (32x32, 16x16, 8x8 maps) and a 100-way classifier, 8,662,100 parameters in
all. Four post-activation basic blocks per stage (convolutions without bias, a 1x1
convolution and a normalisation on each shortcut that changes shape), a final
normalisation before global average pooling and the classifier give exactly 8,662,100;
the table's "(5)" for the last two stages cannot (five blocks add 0.7 M and 2.8 M).

Normalisation: the seed used BatchNorm. tinytwin normalises per sample with GroupNorm
(the same two parameters per channel, so the same count), because batch statistics would
let the simulator's padded batches and running buffers change the maths of a step across
twins; GroupNorm is also the usual choice in non-IID federated learning (Hsieh et al., 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tinytwin.models.layers import Layer, LayerStack, Shape


def norm_groups(channels: int) -> int:
    """Group count of a normalisation over ``channels``: gcd(channels, 32) (32 groups where they divide)."""
    return math.gcd(channels, 32)


def wideresnet_layers(
    input_shape: Shape, num_classes: int, channels: Sequence[int] = (16, 160, 320), blocks: int = 4, stem: int = 16
) -> list[Layer]:
    """Stem conv 3x3 (``stem`` channels) → one stage of ``blocks`` residual blocks per width in
    ``channels`` (the first stage at stride 1, each next one halving the map) → normalisation,
    ReLU, global average pooling → the classifier."""
    stack = LayerStack(input_shape).conv(int(stem), 3, padding=1, bias=False)
    for i, width in enumerate(channels):
        for b in range(int(blocks)):
            stride = 2 if i > 0 and b == 0 else 1
            stack.resblock(int(width), stride, norm_groups(int(width)))
    last = stack.shape[0]
    stack.groupnorm(norm_groups(last)).relu()
    return stack.global_avgpool().linear(num_classes).layers
