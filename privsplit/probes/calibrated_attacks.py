"""Two membership attacks that query more than the record's own returned vector.

* ``augmentation`` (label-only; Choquette-Choo et al. 2021, "data augmentation" attack): the attacker
  queries the service with flipped and shifted copies of the candidate image and counts how many come
  back with the right label. A model that memorised a record keeps its label under small changes; a
  record it never saw flips sooner. It reads nothing but labels, so no edit of the scores that keeps
  the label can hide from it (only a purifier that changes labels moves it).
* ``lira_offline`` (Carlini et al. 2022, offline LiRA; per-record calibration): every shadow model was
  trained without the candidate (the attacker's data is disjoint from the members), so its scores
  on the candidate sample the "out" distribution of that very record. Membership score: how far the
  target's logit-scaled confidence ``log p_y - log(1 - p_y)`` lies above the shadows' mean for the
  record, in units of their spread (per record with >= 4 shadows, else the spread over all records).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privsplit.errors import ConfigError

LOG_EPS = 1e-30
MIN_SHADOWS_PER_RECORD_STD = 4


@dataclass(frozen=True)
class Augmentation:
    flip: bool = False  # left-right
    dy: int = 0  # shift in pixels (down > 0), zero-filled
    dx: int = 0

    @property
    def name(self) -> str:
        return ("flip+" if self.flip else "") + f"shift({self.dy},{self.dx})"


DEFAULT_AUGMENTATIONS = (
    Augmentation(),
    Augmentation(flip=True),
    *(Augmentation(dy=dy, dx=dx) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2))),
)


def augment(images: np.ndarray, aug: Augmentation) -> np.ndarray:
    """``uint8 (N, H, W, C)`` images flipped and shifted (vacated pixels are 0)."""
    if images.ndim != 4:
        raise ConfigError(f"augment expects (N, H, W, C) images, got shape {images.shape}")
    h, w = images.shape[1:3]
    if abs(aug.dy) >= h or abs(aug.dx) >= w:
        raise ConfigError(f"a shift of ({aug.dy}, {aug.dx}) px leaves nothing of a {h}x{w} image")
    x = images[:, :, ::-1] if aug.flip else images
    out = np.zeros_like(images)
    ys, yd = (slice(0, h - aug.dy), slice(aug.dy, h)) if aug.dy >= 0 else (slice(-aug.dy, h), slice(0, h + aug.dy))
    xs, xd = (slice(0, w - aug.dx), slice(aug.dx, w)) if aug.dx >= 0 else (slice(-aug.dx, w), slice(0, w + aug.dx))
    out[:, yd, xd] = x[:, ys, xs]
    return out


def augmentation_score(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of the ``(A, N, K)`` augmented queries whose returned label is right (higher = member)."""
    if probs.ndim != 3 or probs.shape[1] != len(labels):
        raise ConfigError(f"augmented scores must be (A, N, K) with N labels, got {probs.shape} and {len(labels)}")
    return (probs.argmax(2) == labels[None, :]).mean(0).astype(np.float64)


def scaled_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log p_y - log(1 - p_y)`` (LiRA's logit scaling) of ``(..., N, K)`` scores, computed stably."""
    p = np.clip(probs.astype(np.float64), LOG_EPS, None)
    idx = np.broadcast_to(np.asarray(labels).reshape(-1, 1), p.shape[:-1] + (1,))
    py = np.take_along_axis(p, idx, axis=-1)[..., 0]
    rest = p.sum(-1) - py  # 1 - p_y without the cancellation of 1 - 0.999999
    return np.log(py) - np.log(np.clip(rest, LOG_EPS, None))


def lira_offline_score(target_probs: np.ndarray, shadow_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Offline LiRA: target's scaled confidence vs the "out" shadows' on the same record.

    ``target_probs (N, K)``, ``shadow_probs (S, N, K)`` (S shadow models, none trained on the records).
    """
    if shadow_probs.ndim != 3 or shadow_probs.shape[1:] != target_probs.shape:
        raise ConfigError(f"shadow scores {shadow_probs.shape} do not match the target's {target_probs.shape}")
    phi = scaled_confidence(target_probs, labels)
    out = scaled_confidence(shadow_probs, labels)  # (S, N)
    mu = out.mean(0)
    if len(out) >= MIN_SHADOWS_PER_RECORD_STD:
        sigma = out.std(0, ddof=1)
    else:
        sigma = np.full(len(mu), (out - mu).std() if len(out) > 1 else out.std())
    return (phi - mu) / np.maximum(sigma, 1e-3)
