"""A MobileNetV2 (Sandler et al. 2018) cut into blocks, so its first k blocks can be the encoder.

Written here rather than taken from torchvision: PyPI's torchvision does not import beside the pinned
CPU torch, and no pretrained weights are downloaded at run time.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), as in the paper
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
NUM_BLOCKS = 1 + sum(n for _, _, n, _ in _SETTINGS)  # stem + 17 inverted residuals = 18


def _div8(v: float) -> int:
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, 1))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def mobilenet_v2_blocks(in_channels: int, width_mult: float = 1.0) -> tuple[list[nn.Module], list[int]]:
    """The 18 feature blocks and the channel count after each."""
    blocks: list[nn.Module] = []
    channels: list[int] = []
    c = _div8(32 * width_mult)
    blocks.append(conv_bn(in_channels, c, 3, 2))
    channels.append(c)
    for t, cout, n, s in _SETTINGS:
        out = _div8(cout * width_mult)
        for i in range(n):
            blocks.append(InvertedResidual(c, out, s if i == 0 else 1, t))
            channels.append(out)
            c = out
    return blocks, channels


def block_strides() -> list[int]:
    strides = [2]
    for _, _, n, s in _SETTINGS:
        strides += [s] + [1] * (n - 1)
    return strides
