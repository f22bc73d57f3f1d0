"""Small shared pieces of the post-hoc attackers: standardisation, validation slices, seeded training, devices.

The attackers, the purifier and the shadow models train where ``device`` says (a ``torch.device``, the CPU by
default: the reference). Nets are built on the CPU under the seed, then moved, so their initial weights do not
depend on the device; batches go to the net's device as they enter and results come back to the CPU as numpy.
Everything runs in float32 on every device (no autocast): the probes measure, they do not race.
"""

from __future__ import annotations

import contextlib
import itertools
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


CPU = torch.device("cpu")


def use_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device`` (None: the CPU); on CUDA, deterministic cuDNN kernels, as training uses."""
    from privsplit.train.device import DevicePolicy

    device = CPU if device is None else torch.device(device)
    DevicePolicy(device).prepare()
    return device


def module_device(net: torch.nn.Module) -> torch.device:
    """Where ``net``'s weights (or, without any, its buffers) live; the CPU for a net with neither."""
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        return tensor.device
    return CPU


def predict(net: torch.nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Forward ``x`` through ``net`` in eval mode, batched, without gradients, on ``net``'s device; numpy out."""
    net.eval()
    device = module_device(net)
    out = []
    with torch.no_grad():
        for idx in batches(len(x), batch_size):
            out.append(net(torch.from_numpy(x[idx]).to(device)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def epoch_bar(total: int, *, desc: str, progress: bool):
    from privsplit.progress import progress_bar

    return progress_bar(range(total), desc=desc, enabled=progress)
