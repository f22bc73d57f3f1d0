"""Reconstruction from the encoder's features: a decoder trained on attacker (feature, image) pairs.

Scored on holdout with torchmetrics' SSIM, PSNR and MSE (pixels in [0, 1]) beside the trivial
baseline that predicts the mean attacker image for every holdout image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from privsplit.errors import DataError
from privsplit.models import ReconstructionDecoder
from privsplit.probes._fit import CPU, Standardizer, batches, epoch_bar, predict, seeded, validation_split
from privsplit.probes.feature_results import ReconstructionLeakage, ReconstructionSamples
from privsplit.probes.feature_spec import FeatureProbeSpec


def to_unit_nchw(images: np.ndarray) -> np.ndarray:
    """``uint8 (N, H, W, C)`` -> ``float32 (N, C, H, W)`` in [0, 1]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def to_uint8_nhwc(x: np.ndarray) -> np.ndarray:
    """``float (N, C, H, W)`` in [0, 1] -> ``uint8 (N, H, W, C)``."""
    return np.clip(np.rint(np.asarray(x).transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)


def image_metrics(preds: np.ndarray, targets: np.ndarray, *, batch_size: int = 256) -> tuple[float, float, float]:
    """(mean per-image SSIM, mean per-image PSNR in dB, MSE over all pixels) of ``float (N, C, H, W)`` in [0, 1].

    SSIM uses the usual 11x11 Gaussian window (sigma 1.5), shrunk to the image for images under 11 px.
    """
    from torchmetrics.functional import mean_squared_error
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    size = min(preds.shape[-2:])
    kernel = 11 if size >= 11 else (size if size % 2 else size - 1)
    ssim, psnr, sq = [], [], 0.0
    for idx in batches(len(preds), batch_size):
        p = torch.from_numpy(np.ascontiguousarray(preds[idx], dtype=np.float32))
        t = torch.from_numpy(np.ascontiguousarray(targets[idx], dtype=np.float32))
        ssim.append(structural_similarity_index_measure(p, t, data_range=1.0, kernel_size=kernel, reduction="none"))
        psnr.append(peak_signal_noise_ratio(p, t, data_range=1.0, dim=(1, 2, 3), reduction="none"))
        sq += float(mean_squared_error(p.flatten(), t.flatten())) * p.numel()
    mse = sq / float(np.prod(preds.shape))
    psnr_all = torch.cat(psnr)
    psnr_all = torch.clamp(psnr_all, max=100.0)  # a perfect image has infinite PSNR; cap it so the mean stays finite
    return float(torch.cat(ssim).mean()), float(psnr_all.mean()), mse


class BaselineOffsetDecoder(nn.Module):
    """A :class:`ReconstructionDecoder` that starts exactly at the mean-image baseline.

    ``ReconstructionDecoder`` ends in ``sigmoid(out(body(z)))``; adding the logit of the mean
    attacker image before the sigmoid and zeroing ``out`` makes the untrained decoder predict the
    mean image, so the attacker spends its training on what the features add and never falls
    below the trivial baseline merely for lack of data or epochs.
    """

    def __init__(self, feature_shape: tuple[int, int, int], mean_image: np.ndarray) -> None:
        super().__init__()
        channels, size = int(mean_image.shape[-3]), int(mean_image.shape[-1])
        self.decoder = ReconstructionDecoder(feature_shape, channels, size)
        nn.init.zeros_(self.decoder.out.weight)
        nn.init.zeros_(self.decoder.out.bias)
        p = torch.from_numpy(np.clip(mean_image, 1e-3, 1 - 1e-3).astype(np.float32).reshape(1, channels, size, size))
        self.register_buffer("offset", torch.log(p) - torch.log1p(-p))
        self.size = size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.decoder.out(self.decoder.body(z))
        if y.shape[-1] != self.size:
            y = F.interpolate(y, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.sigmoid(y + self.offset)


def attack_reconstruction(
    features_train: np.ndarray,
    images_train: np.ndarray,
    features_test: np.ndarray,
    images_test: np.ndarray,
    *,
    spec: FeatureProbeSpec,
    progress: bool = True,
    device: torch.device = CPU,
) -> ReconstructionLeakage:
    """Train a :class:`BaselineOffsetDecoder` on ``device`` on the attacker pairs and score it on the test pairs."""
    _, height, width, channels = images_train.shape
    if height != width:
        raise DataError(f"reconstruction needs square images, got {height}x{width}")
    targets = to_unit_nchw(images_train)
    tr, va = validation_split(len(targets), spec.validation_fraction, seed=spec.seed)
    scaler = Standardizer.fit(features_train[tr], per_channel=True)
    z_tr, z_va, z_te = scaler(features_train[tr]), scaler(features_train[va]), scaler(features_test)
    y_tr, y_va = torch.from_numpy(targets[tr]), targets[va]
    mean_image = targets.mean(axis=0, keepdims=True)  # the baseline, and the decoder's starting point
    rng = np.random.default_rng(spec.seed + 3)
    epochs = spec.reconstruction_epochs
    with seeded(spec.seed + 3):
        # channels-last: the same arithmetic, about a third less CPU time for these convolutions
        decoder = BaselineOffsetDecoder(tuple(features_train.shape[1:]), mean_image).to(
            device, memory_format=torch.channels_last
        )
        opt = torch.optim.Adam(decoder.parameters(), lr=spec.reconstruction_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        # epoch 0 (the untrained decoder = the mean image) is a candidate too: features that add
        # nothing leave the attacker exactly at the baseline rather than below it
        best = float(np.mean((predict(decoder, z_va, batch_size=256) - y_va) ** 2))
        best_epoch, stale = 0, 0
        best_state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
        bar = epoch_bar(epochs, desc="reconstruction", progress=progress)
        for epoch in bar:
            decoder.train()
            for idx in batches(len(z_tr), spec.reconstruction_batch_size, rng):
                z = torch.from_numpy(z_tr[idx]).to(device).contiguous(memory_format=torch.channels_last)
                y = y_tr[idx].to(device).contiguous(memory_format=torch.channels_last)
                loss = F.mse_loss(decoder(z), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            schedule.step()
            val = float(np.mean((predict(decoder, z_va, batch_size=256) - y_va) ** 2))
            if val < best:
                best, best_epoch, stale = val, epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
            else:
                stale += 1
            bar.set_postfix(val_mse=f"{val:.4f}", best=f"{best:.4f}@{best_epoch}")
            if stale >= spec.patience:
                break
        decoder.load_state_dict(best_state)
    preds = predict(decoder, z_te, batch_size=256)
    truth = to_unit_nchw(images_test)
    ssim, psnr, mse = image_metrics(preds, truth)
    baseline = np.broadcast_to(mean_image, truth.shape)
    b_ssim, b_psnr, b_mse = image_metrics(baseline, truth)
    n = min(spec.num_samples, len(truth))
    samples = ReconstructionSamples(
        originals=np.ascontiguousarray(images_test[:n]),
        reconstructions=to_uint8_nhwc(preds[:n]),
        mean_image=to_uint8_nhwc(mean_image)[0],
    )
    return ReconstructionLeakage(
        ssim=ssim,
        psnr=psnr,
        mse=mse,
        baseline_ssim=b_ssim,
        baseline_psnr=b_psnr,
        baseline_mse=b_mse,
        best_epoch=best_epoch,
        epochs=epoch + 1,
        samples=samples,
    )
