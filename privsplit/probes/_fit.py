"""Small shared pieces of the post-hoc attackers: standardisation, validation slices, seeded training."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Standardizer:
    """Affine map fitted on attacker data: per element (``flat``) or per channel of ``(N, C, h, w)``."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, *, per_channel: bool) -> Standardizer:
        axes = (0, 2, 3) if per_channel else (0,)
        mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
        std = x.std(axis=axes, keepdims=True, dtype=np.float64)
        std = np.where(std > 1e-8, std, 1.0)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


def validation_split(
    n: int, fraction: float, *, seed: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) of a seeded slice; stratified when every class has >= 2 items."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    strat = None
    if stratify is not None:
        _, counts = np.unique(stratify, return_counts=True)
        n_val = max(1, int(round(fraction * n)))
        if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
            strat = stratify
    train, val = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    return np.sort(train), np.sort(val)


def balanced_class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """``n / (K_present * count_k)`` per class (0 for classes absent from ``y``), as scikit-learn's "balanced"."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights.astype(np.float32)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch's global RNG (init, dropout) for a block without disturbing the caller's stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def batches(n: int, batch_size: int, rng: np.random.Generator | None = None):
    """Index batches over ``range(n)``, shuffled when ``rng`` is given.

    Drops a trailing batch of 1 when shuffling (BatchNorm).
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        if rng is not None and len(chunk) < 2 and n > 1:
            continue
        yield chunk


def predict(net: torch.nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Forward ``x`` through ``net`` in eval mode, batched, without gradients."""
    net.eval()
    out = []
    with torch.no_grad():
        for idx in batches(len(x), batch_size):
            out.append(net(torch.from_numpy(x[idx])).numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def epoch_bar(total: int, *, desc: str, progress: bool):
    from privsplit.progress import progress_bar

    return progress_bar(range(total), desc=desc, enabled=progress)
