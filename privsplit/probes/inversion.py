"""Model inversion from returned scores: a decoder from the (top-k truncated) score vector to the image.

The attacker queries the service with its own images (the ``attacker`` part), records the returned
scores, and trains a decoder ``scores -> image`` on those pairs (MSE). It is then scored on members and
non-members: per-pixel MSE and SSIM (torchmetrics) in ``[0, 1]`` pixel space. Two baselines sit beside
it: the attacker's mean image (what an attacker without scores gets) and the mean image of the
predicted class (what any label-preserving purifier must still give away: the inversion floor).

The decoder input keeps, for each class, its log-probability if it is among the top ``k`` returned
scores and 0 otherwise, plus the top-k mask: ``k = K`` uses the whole vector. To be at least as strong
as the class-mean guess, the decoder predicts a correction (in logit space, last layer starting at
zero) to the mean training image of the predicted class, and keeps the epoch with the lowest MSE on
a held-out fifth of the attacker's pairs (early stopping: a few hundred images overfit fast).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from privsplit.errors import ConfigError
from privsplit.models.threads import tiny_model_threads
from privsplit.results import from_dict, to_dict

LOG_FLOOR = -30.0


@dataclass(frozen=True)
class InversionConfig:
    top_k: int = 3
    hidden: int = 256
    epochs: int = 100
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    validation_fraction: float = 0.2


@dataclass(frozen=True)
class InversionMetrics:
    mse: float
    ssim: float
    mse_members: float
    mse_nonmembers: float
    ssim_members: float
    ssim_nonmembers: float
    mean_image_mse: float  # baseline: the attacker's mean image, no scores used
    class_mean_mse: float  # floor for a label-preserving purifier: mean attacker image of the predicted class
    top_k: int
    n_train: int

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> InversionMetrics:
        return from_dict(cls, data)


def score_features(probs: np.ndarray, top_k: int) -> np.ndarray:
    """``(N, 2K)``: log-probs of the top-k entries (scaled to [0, 1], 0 elsewhere) and the top-k mask."""
    n, k = probs.shape
    top_k = min(max(1, top_k), k)
    logp = np.log(np.clip(probs.astype(np.float64), np.exp(LOG_FLOOR), None))
    scaled = 1.0 - logp / LOG_FLOOR
    order = np.argsort(-probs, axis=1)[:, :top_k]
    mask = np.zeros((n, k), dtype=np.float64)
    np.put_along_axis(mask, order, 1.0, axis=1)
    return np.c_[scaled * mask, mask].astype(np.float32)


class ScoreDecoder(nn.Module):
    """MLP: score features -> image ``(C, H, W)`` in [0, 1], as a correction to the predicted class's mean image."""

    def __init__(self, n_in: int, class_means: torch.Tensor, hidden: int) -> None:
        super().__init__()
        k, c, h, w = class_means.shape
        self.image_shape = (c, h, w)
        self.num_classes = k
        self.register_buffer("prior", torch.logit(class_means.clamp(0.01, 0.99)).flatten(1))
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, 2 * hidden),
            nn.ReLU(),
            nn.Linear(2 * hidden, c * h * w),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        predicted = x[:, : self.num_classes].argmax(1)  # scaled log-probs: the top entry is the largest
        return torch.sigmoid(self.prior[predicted] + self.net(x)).view(-1, *self.image_shape)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` -> float ``(N, C, H, W)`` in [0, 1]."""
    return torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def per_image_mse_ssim(pred: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from torchmetrics.functional.image import structural_similarity_index_measure

    mse = ((pred - target) ** 2).flatten(1).mean(1)
    size = target.shape[-1]
    kernel = 11 if size >= 16 else (size // 2) * 2 - 1
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none", kernel_size=kernel)
    return mse.numpy().astype(np.float64), ssim.numpy().astype(np.float64)


@dataclass(frozen=True, eq=False)
class InversionOutcome:
    metrics: InversionMetrics
    reconstructions_members: np.ndarray  # float (n, C, H, W), a few examples for the grid
    reconstructions_nonmembers: np.ndarray


def class_mean_images(pixels: torch.Tensor, predicted: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(K, C, H, W)``: mean image per predicted class (the overall mean for classes never predicted)."""
    overall = pixels.mean(0)
    return torch.stack(
        [
            pixels[torch.as_tensor(predicted == c)].mean(0) if (predicted == c).any() else overall
            for c in range(num_classes)
        ]
    )


def fit_decoder(
    probs: np.ndarray,
    images: np.ndarray,
    *,
    config: InversionConfig,
    seed: int,
    progress: bool = False,
    device: torch.device = torch.device("cpu"),
) -> ScoreDecoder:
    """Train the score -> image decoder on ``device`` on the attacker's (scores, image) pairs (early-stopped)."""
    if len(probs) != len(images) or len(probs) < 5:
        raise ConfigError(
            f"inversion needs at least 5 (scores, image) pairs, got {len(probs)} scores and {len(images)} images"
        )
    import copy

    from privsplit.progress import progress_bar

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(probs))
    n_val = max(1, int(round(config.validation_fraction * len(probs))))
    val, train = order[:n_val], order[n_val:]
    x = torch.as_tensor(score_features(probs, config.top_k))
    y = to_pixels(images)
    net = ScoreDecoder(x.shape[1], class_mean_images(y[train], probs[train].argmax(1), probs.shape[1]), config.hidden)
    net, x, y = net.to(device), x.to(device), y.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def val_mse() -> float:
        net.eval()
        with torch.no_grad():
            return float(((net(x[val]) - y[val]) ** 2).mean())

    best = (val_mse(), copy.deepcopy(net.state_dict()))
    for _ in progress_bar(range(config.epochs), desc="inversion decoder", enabled=progress):
        net.train()
        perm = train[rng.permutation(len(train))]
        for i in range(0, len(perm), config.batch_size):
            idx = perm[i : i + config.batch_size]
            loss = ((net(x[idx]) - y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = val_mse()
        if score < best[0]:
            best = (score, copy.deepcopy(net.state_dict()))
    net.load_state_dict(best[1])
    return net.eval()


def invert(
    train_probs: np.ndarray,
    train_images: np.ndarray,
    members: tuple[np.ndarray, np.ndarray],
    nonmembers: tuple[np.ndarray, np.ndarray],
    *,
    config: InversionConfig = InversionConfig(),
    seed: int = 0,
    n_examples: int = 8,
    progress: bool = False,
    device: torch.device = torch.device("cpu"),
) -> InversionOutcome:
    """Train on ``(train_probs, train_images)`` on ``device``; score on ``members`` and ``nonmembers``
    ``(probs, images)``."""
    with tiny_model_threads():
        net = fit_decoder(train_probs, train_images, config=config, seed=seed, progress=progress, device=device)
    train_pixels = to_pixels(train_images)
    mean_image = train_pixels.mean(0, keepdim=True)
    train_pred = train_probs.argmax(1)
    class_means = {int(c): train_pixels[train_pred == c].mean(0) for c in np.unique(train_pred)}

    def score(probs: np.ndarray, images: np.ndarray):
        target = to_pixels(images)
        with torch.no_grad():
            recon = net(torch.as_tensor(score_features(probs, config.top_k)).to(device)).cpu()
        mse, ssim = per_image_mse_ssim(recon, target)
        base = ((target - mean_image) ** 2).flatten(1).mean(1).numpy()
        cls = torch.stack([class_means.get(int(c), mean_image[0]) for c in probs.argmax(1)])
        cls_mse = ((target - cls) ** 2).flatten(1).mean(1).numpy()
        return mse, ssim, base, cls_mse, recon[:n_examples].numpy()

    m = score(*members)
    n = score(*nonmembers)
    cat = lambda i: np.concatenate([m[i], n[i]])  # noqa: E731
    metrics = InversionMetrics(
        mse=float(cat(0).mean()),
        ssim=float(cat(1).mean()),
        mse_members=float(m[0].mean()),
        mse_nonmembers=float(n[0].mean()),
        ssim_members=float(m[1].mean()),
        ssim_nonmembers=float(n[1].mean()),
        mean_image_mse=float(cat(2).mean()),
        class_mean_mse=float(cat(3).mean()),
        top_k=min(config.top_k, train_probs.shape[1]),
        n_train=len(train_probs),
    )
    return InversionOutcome(metrics, m[4], n[4])
