"""Measuring parity: torch reference on holdout, each artefact's features, accuracy and leakage.

One seeded noise draw is shared by the torch reference and every artefact, so differences come from
conversion and wire quantization only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from privsplit.bundle import FeatureSpec
from privsplit.data import Dataset, Part, Split
from privsplit.export.runtime import EncoderArtefact
from privsplit.noise_keying import NoiseKeying, frame_keyed_normal, stand_in_key

Encode = Callable[[np.ndarray], np.ndarray]
_NOISE_CHUNK = 256  # the feature probe's default encode batch; noise is drawn in chunks of it


@dataclass(frozen=True, eq=False)
class Holdout:
    """Holdout images, labels, the torch encoder's noise-free features and one shared noise draw."""

    images: np.ndarray
    labels: np.ndarray
    features: np.ndarray  # torch encoder, no noise, (N, C, h, w)
    noise: np.ndarray  # noise_sigma * N(0, 1), same shape
    torch_accuracy: float

    @property
    def unit(self) -> np.ndarray:
        return (self.images.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def torch_features(model, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            out.append(model.encoder(model.preprocess(images[s : s + batch_size])).numpy())
    return np.concatenate(out).astype(np.float32)


def holdout_reference(
    model, data: Dataset, split: Split, *, seed: int, noise_seed: int, limit: int | None = None
) -> Holdout:
    """Holdout images (``limit``: a subset drawn with ``seed``) with the run's channel noise (``noise_seed``).

    The noise is the draw :meth:`SplitModel.scores` makes, so on the whole holdout ``torch_accuracy`` is the
    accuracy ``privsplit train`` and ``privsplit probe features`` print for the run.
    """
    from privsplit.models import channel_noise

    index = split[Part.HOLDOUT]
    if limit is not None and len(index) > limit:
        index = np.sort(np.random.default_rng(seed).choice(index, size=limit, replace=False))
    images, labels = data.images[index], data.task_labels[index]
    feats = torch_features(model, images)
    noise = channel_noise(len(images), feats.shape[1:], sigma=float(model.config.noise_sigma), seed=noise_seed)
    accuracy = float((model.scores(images, noise_seed=noise_seed).argmax(1) == labels).mean())
    return Holdout(images=images, labels=labels, features=feats, noise=noise, torch_accuracy=accuracy)


def feature_error(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    a, b = ref.reshape(len(ref), -1).astype(np.float64), got.reshape(len(got), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, (a * b).sum(1) / np.maximum(denom, 1e-30), 1.0)
    diff = np.abs(a - b)
    return {
        "max_abs_err": float(diff.max()),
        "mean_abs_err": float(diff.mean()),
        "cosine": float(cos.mean()),
        "cosine_min": float(cos.min()),
    }


def server_accuracy(server_session, wire_features: np.ndarray, labels: np.ndarray, *, batch_size: int = 256) -> float:
    name = server_session.get_inputs()[0].name
    preds = [
        server_session.run(None, {name: wire_features[s : s + batch_size]})[0].argmax(1)
        for s in range(0, len(wire_features), batch_size)
    ]
    return float((np.concatenate(preds) == labels).mean())


def through_wire(features: np.ndarray, noise: np.ndarray, wire: FeatureSpec) -> np.ndarray:
    """What the cloud sees: (features + noise) -> int8 wire -> dequantized float32."""
    return wire.dequantize(wire.quantize(features + noise))


def artefact_encode_fn(art: EncoderArtefact, wire: FeatureSpec, *, seed: int) -> Encode:
    """uint8 images -> the artefact's features + fresh seeded noise, wire-quantized and dequantized.

    Noise comes from one torch generator advancing across calls in chunks of 256, like
    :func:`privsplit.probes.feature_probe.torch_encoder_fn`, so the probe sees the same noise draws. A bundle
    whose noise is keyed on the frame (``wire.noise_keying``) gets it keyed on a stand-in device secret.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    keyed = NoiseKeying(wire.noise_keying) is NoiseKeying.FRAME

    def encode(images: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(images), _NOISE_CHUNK):
            chunk = images[s : s + _NOISE_CHUNK]
            z = art.encode(chunk.astype(np.float32) / np.float32(255.0))
            if wire.noise_sigma <= 0:
                noise = 0.0
            elif keyed:
                noise = wire.noise_sigma * frame_keyed_normal(stand_in_key(seed), chunk, tuple(z.shape[1:]))
            else:
                noise = (wire.noise_sigma * torch.randn(z.shape, generator=gen)).numpy()
            out.append(through_wire(z, noise, wire))
        return np.concatenate(out)

    return encode


@dataclass(frozen=True)
class Leakage:
    attribute_balanced_accuracy: float | None
    reconstruction_ssim: float | None
    attribute_chance: float | None = None
    attribute_task_floor: float | None = None
    reconstruction_baseline_ssim: float | None = None
    attribute_null: float | None = None  # the best attacker's permutation null (chance level of best-of-N)
    attribute_attacker: str | None = None  # which attacker (family@training set) read the best


def artefact_leakage(
    art: EncoderArtefact, wire: FeatureSpec, data: Dataset, split: Split, *, seed: int, spec, progress: bool
) -> Leakage:
    """:func:`leakage` on what ``art`` puts on the wire (:func:`artefact_encode_fn`, noise seeded ``seed``)."""
    return leakage(artefact_encode_fn(art, wire, seed=seed), data, split, spec=spec, progress=progress)


def leakage(encode: Encode, data: Dataset, split: Split, *, spec, progress: bool) -> Leakage:
    """Run the feature-leakage probe on ``encode`` and keep the headline figures."""
    from privsplit.probes.feature_probe import probe_features

    result = probe_features(encode, data, split, spec=spec, progress=progress)
    attr, rec = result.attribute, result.reconstruction
    return Leakage(
        attribute_balanced_accuracy=None if attr is None else float(attr.balanced_accuracy),
        reconstruction_ssim=None if rec is None else float(rec.ssim),
        attribute_chance=None if attr is None else float(attr.chance),
        attribute_task_floor=None if attr is None else float(attr.task_floor),
        reconstruction_baseline_ssim=None if rec is None else float(rec.baseline_ssim),
        attribute_null=None
        if attr is None or attr.permutation_null_mean is None
        else float(attr.permutation_null_mean),
        attribute_attacker=None if attr is None else str(attr.best),
    )
