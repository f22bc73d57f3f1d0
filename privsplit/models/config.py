"""The JSON-serialisable description that rebuilds every model of a run (no pickle anywhere)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from privsplit.errors import ConfigError
from privsplit.results import from_dict, to_dict


class Arch(str, Enum):
    SMALL_CNN = "small-cnn"  # 28-64 px inputs
    MOBILENET_V2 = "mobilenet-v2"  # 96-224 px inputs, split after the first k blocks


class Norm(str, Enum):
    """The normalisation layers. GroupNorm never mixes records: DP-SGD's per-record gradients need it."""

    BATCH = "batch"
    GROUP = "group"  # every BatchNorm replaced by GroupNorm(gcd(32, C), C), as Opacus's ModuleValidator.fix does


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the encoder, the server layers and the adversaries.

    ``split`` is the number of blocks that run on the device (the encoder); the rest run in the cloud.
    The encoder ends in a 1x1 bottleneck to ``feature_channels`` and a parameter-free normalisation,
    so features have unit variance per channel and ``noise_sigma`` is a signal-to-noise setting.
    """

    arch: Arch
    in_channels: int
    image_size: int
    num_classes: int
    split: int
    feature_channels: int = 4
    width: int = 32
    head_blocks: int = 2
    width_mult: float = 1.0
    noise_sigma: float = 0.0
    num_private_classes: int | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    norm: Norm = Norm.BATCH

    def __post_init__(self) -> None:
        if self.split < 1:
            raise ConfigError(f"split point must be >= 1 block, got {self.split}")
        if self.feature_channels < 1:
            raise ConfigError(f"feature channels must be >= 1, got {self.feature_channels}")
        if self.noise_sigma < 0:
            raise ConfigError(f"noise sigma must be >= 0, got {self.noise_sigma}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ConfigError("mean/std need one value per input channel")
        if self.arch is Arch.MOBILENET_V2:
            from privsplit.models.mobilenet import NUM_BLOCKS

            if not 1 <= self.split < NUM_BLOCKS:
                raise ConfigError(f"MobileNetV2 split must be in 1..{NUM_BLOCKS - 1}, got {self.split}")
        elif self.image_size // (2**self.split) < 1:
            raise ConfigError(f"split {self.split} leaves no spatial extent at {self.image_size} px")

    @staticmethod
    def default_split(arch: Arch, image_size: int) -> int:
        """The split that leaves an 8x8 (or nearest) feature map for the small CNN; 7 blocks for MobileNetV2."""
        if arch is Arch.MOBILENET_V2:
            return 7
        return max(1, int(round(math.log2(max(image_size, 8) / 8))))

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        return from_dict(cls, data, strict=True)
