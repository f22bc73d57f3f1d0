"""Attackers on the encoder's features: attribute classifiers and a reconstruction decoder.

The same architectures serve as training-time adversaries (Privacy Partitioning) and as the fresh
post-hoc attackers of the feature-leakage probe, so the adversary is as strong as the attacker.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LinearAttacker(nn.Module):
    """Logistic regression on the flattened features."""

    def __init__(self, feature_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(feature_shape), num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z.flatten(1))


class MLPAttacker(nn.Module):
    """Two hidden layers on the flattened features."""

    def __init__(self, feature_shape: tuple[int, int, int], num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(feature_shape), hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class CNNAttacker(nn.Module):
    """A small CNN over the feature map."""

    def __init__(self, feature_shape: tuple[int, int, int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        c, h, _ = feature_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, 1, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 2 if h >= 4 else 1, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, num_classes),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


ATTRIBUTE_ATTACKERS: dict[str, type[nn.Module]] = {
    "linear": LinearAttacker,
    "mlp": MLPAttacker,
    "cnn": CNNAttacker,
}


class ReconstructionDecoder(nn.Module):
    """Features ``(C, h, w)`` -> image ``(in_channels, H, W)`` in [0, 1] pixel space."""

    def __init__(
        self, feature_shape: tuple[int, int, int], out_channels: int, image_size: int, width: int = 64
    ) -> None:
        super().__init__()
        c, h, _ = feature_shape
        layers: list[nn.Module] = [nn.Conv2d(c, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        size, ch = h, width
        while size < image_size:
            nxt = max(16, ch // 2)
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(ch, nxt, 3, 1, 1),
                nn.BatchNorm2d(nxt),
                nn.ReLU(inplace=True),
            ]
            size, ch = size * 2, nxt
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(ch, out_channels, 3, 1, 1)
        self.image_size = image_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.out(self.body(z))
        if y.shape[-1] != self.image_size:
            y = F.interpolate(y, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return torch.sigmoid(y)
