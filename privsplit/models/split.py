"""The split model: a privacy encoder (device) and server layers (cloud), for both families.

The encoder takes normalised float NCHW images and returns unit-variance features
``(B, feature_channels, h, w)``. Gaussian noise of ``noise_sigma`` is *not* part of the encoder
module (converters do not carry random ops): :meth:`SplitModel.features` adds it, in training and in
every probe, and the edge pipeline adds it on the device from the sigma in the bundle manifest.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from privsplit.models.config import Arch, ModelConfig, Norm
from privsplit.models.mobilenet import block_strides, conv_bn, mobilenet_v2_blocks

SCORE_BATCH = 512  # images per noise draw in SplitModel.scores; channel_noise draws the same stream


def channel_noise(
    n: int, shape: tuple[int, int, int], *, sigma: float, seed: int, batch_size: int = SCORE_BATCH
) -> np.ndarray:
    """The channel noise :meth:`SplitModel.scores` adds for ``n`` images with ``noise_seed=seed``: (n, C, h, w).

    Drawn batch by batch from one generator exactly as ``scores`` draws it, so an accuracy computed from these
    features plus this noise equals the accuracy of ``scores`` (export parity relies on it).
    """
    gen = torch.Generator().manual_seed(seed)
    if sigma <= 0:
        return np.zeros((n, *shape), np.float32)
    draws = [sigma * torch.randn((min(batch_size, n - i), *shape), generator=gen) for i in range(0, n, batch_size)]
    return torch.cat(draws).numpy().astype(np.float32) if draws else np.zeros((0, *shape), np.float32)


def _small_cnn_channels(width: int, count: int) -> list[int]:
    return [width * (2 ** min(i, 2)) for i in range(count)]


def _small_block(cin: int, cout: int, stride: int, *, double: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if double:
        layers += [nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Device-side layers: ``split`` blocks, a 1x1 bottleneck and a parameter-free normalisation."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch is Arch.SMALL_CNN:
            chans = _small_cnn_channels(config.width, config.split)
            blocks, cin = [], config.in_channels
            for i, c in enumerate(chans):
                # one conv per block on the device (cheap at high resolution), two on the last block
                blocks.append(_small_block(cin, c, 2, double=i == len(chans) - 1))
                cin = c
        else:
            all_blocks, chans = mobilenet_v2_blocks(config.in_channels, config.width_mult)
            blocks, cin = all_blocks[: config.split], chans[config.split - 1]
        self.blocks = nn.Sequential(*blocks)
        self.bottleneck = nn.Conv2d(cin, config.feature_channels, 1)
        # affine=False: unit variance per channel, so a fixed noise sigma is a fixed signal-to-noise ratio
        self.norm = nn.BatchNorm2d(config.feature_channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.bottleneck(self.blocks(x)))


class ServerLayers(nn.Module):
    """Cloud-side layers: from features to task logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch is Arch.SMALL_CNN:
            width = _small_cnn_channels(config.width, config.split + config.head_blocks)
            layers: list[nn.Module] = [conv_bn(config.feature_channels, width[config.split - 1], 1, 1)]
            cin = width[config.split - 1]
            for c in width[config.split :]:
                layers.append(_small_block(cin, c, 2 if _spatial(config) > 2 else 1))
                cin = c
        else:
            all_blocks, chans = mobilenet_v2_blocks(config.in_channels, config.width_mult)
            cin = chans[config.split - 1]
            layers = [conv_bn(config.feature_channels, cin, 1, 1), *all_blocks[config.split :]]
            cin = chans[-1]
            last = max(320, int(1280 * min(config.width_mult, 1.0)))
            layers.append(conv_bn(cin, last, 1, 1))
            cin = last
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(cin, config.num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.body(z)).flatten(1)
        return self.classifier(self.dropout(h))


def _spatial(config: ModelConfig) -> int:
    return feature_shape(config)[1]


def feature_shape(config: ModelConfig) -> tuple[int, int, int]:
    """``(C, h, w)`` of the encoder's output for this config."""
    size = config.image_size
    strides = [2] * config.split if config.arch is Arch.SMALL_CNN else block_strides()[: config.split]
    for s in strides:
        size = (size + s - 1) // s  # 3x3 conv, padding 1
    return (config.feature_channels, size, size)


class SplitModel(nn.Module):
    """Encoder + noise channel + server layers, with the preprocessing the manifest will carry."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head = ServerLayers(config)
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1))

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8 (N, H, W, C)`` -> normalised float ``(N, C, H, W)``, on the model's device."""
        x = torch.as_tensor(np.asarray(images), device=self.mean.device).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def add_noise(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.config.noise_sigma <= 0:
            return z
        if generator is not None and generator.device != z.device:  # seeded CPU noise, the same on every device
            noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=generator.device).to(z.device)
        else:
            noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return z + self.config.noise_sigma * noise

    def features(
        self, x: torch.Tensor, *, noise: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """What leaves the device: encoder output plus (by default) the channel noise."""
        z = self.encoder(x)
        return self.add_noise(z, generator) if noise else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def scores(self, images: np.ndarray, *, noise_seed: int, batch_size: int = SCORE_BATCH) -> np.ndarray:
        """Softmax scores the deployed pipeline returns for ``uint8 (N, H, W, C)`` images.

        Encoder, channel noise from one generator seeded with ``noise_seed`` (advancing across
        batches), server layers; eval mode, on the model's device (the noise is drawn on the CPU either way).
        The one place probes and the purifier get scores from.
        """
        self.eval()
        gen = torch.Generator().manual_seed(noise_seed)
        out = [
            torch.softmax(self.head(self.features(self.preprocess(images[i : i + batch_size]), generator=gen)), dim=1)
            .cpu()
            .numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.config.num_classes), np.float32)


def group_norms(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` (in place) by GroupNorm(gcd(32, C), C) with the same ``affine``.

    In-place activations become out-of-place: Opacus's per-record gradient hooks forbid editing a hooked
    module's output in place (same weights, same function)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(32, c), c, eps=child.eps, affine=child.affine))
        elif isinstance(child, (nn.ReLU, nn.ReLU6)):
            child.inplace = False
        else:
            group_norms(child)
    return module


def build_split_model(config: ModelConfig) -> SplitModel:
    model = SplitModel(config)
    return group_norms(model) if config.norm is Norm.GROUP else model
