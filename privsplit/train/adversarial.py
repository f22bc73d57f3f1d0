"""The adversarial training loop of Privacy Partitioning.

Encoder + server layers minimise the task loss while adversaries that see the (noisy) features try
to infer the private attribute and/or reconstruct the input; the two sides are updated in
alternation. What made the post-hoc attacker fail in our measurements (see docs/methods.md): a
narrow bottleneck, Gaussian channel noise, adversaries as strong and as varied as the attackers
(the probe's own CNN and linear architectures, re-initialised every epoch with a warm-up, several
steps per encoder step), and entropy maximisation instead of -CE.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privsplit.data import Dataset, Part, Split
from privsplit.models import ATTRIBUTE_ATTACKERS, ReconstructionDecoder, SplitModel, feature_shape
from privsplit.progress import progress_bar
from privsplit.train.config import AdversaryLoss, TrainConfig


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    phase: str  # "joint" or "head"
    task_loss: float
    task_accuracy: float
    reference_accuracy: float
    adversary_loss: float | None = None
    adversary_accuracy: float | None = None
    reconstruction_mse: float | None = None


@dataclass(frozen=True)
class TrainResult:
    model: SplitModel
    history: tuple[EpochStats, ...]
    selected_epoch: int

    def history_json(self) -> list[dict]:
        return [asdict(h) for h in self.history]


@torch.no_grad()
def predict(model: SplitModel, x: torch.Tensor, *, noise_seed: int = 0, batch_size: int = 512) -> np.ndarray:
    """Task predictions of the deployed system (encoder, seeded channel noise, server layers)."""
    model.eval()
    gen = torch.Generator().manual_seed(noise_seed)
    out = [model.head(model.features(x[i : i + batch_size], generator=gen)).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def accuracy(model: SplitModel, x: torch.Tensor, y: torch.Tensor, *, noise_seed: int = 0) -> float:
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x, noise_seed=noise_seed) == y.numpy()).mean())


class _Adversaries:
    """Attribute adversaries (+ optional reconstruction decoder), re-initialised every epoch."""

    def __init__(self, model: SplitModel, config: TrainConfig, num_private: int | None) -> None:
        self.shape = feature_shape(model.config)
        self.config = config
        self.num_private = num_private
        self.use_attr = num_private is not None and config.adv_weight > 0 and bool(config.adversaries)
        self.use_rec = config.rec_weight > 0
        self.reset()

    @property
    def active(self) -> bool:
        return self.use_attr or self.use_rec

    def reset(self) -> None:
        mc = None
        self.attackers: list[nn.Module] = []
        if self.use_attr:
            self.attackers = [ATTRIBUTE_ATTACKERS[name](self.shape, self.num_private) for name in self.config.adversaries]
        self.decoder = None
        if self.use_rec:
            mc = self._model_config
            self.decoder = ReconstructionDecoder(self.shape, mc.in_channels, mc.image_size)
        params = [p for a in self.attackers for p in a.parameters()]
        if self.decoder is not None:
            params += list(self.decoder.parameters())
        self.opt = torch.optim.Adam(params, lr=self.config.adv_lr) if params else None

    def bind(self, model: SplitModel) -> _Adversaries:
        self._model_config = model.config
        return self

    def step(self, z: torch.Tensor, private: torch.Tensor | None, pixels: torch.Tensor) -> tuple[float, float | None, float | None]:
        """One optimiser step of every adversary on detached features; returns (attr loss, attr acc, rec mse)."""
        assert self.opt is not None
        self.opt.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        attr_loss = attr_acc = rec = None
        if self.use_attr:
            outs = [a(z) for a in self.attackers]
            losses = [F.cross_entropy(o, private) for o in outs]
            loss = loss + sum(losses)
            attr_loss = float(sum(term.item() for term in losses) / len(losses))
            attr_acc = float(max((o.argmax(1) == private).float().mean().item() for o in outs))
        if self.decoder is not None:
            mse = F.mse_loss(self.decoder(z), pixels)
            loss = loss + mse
            rec = float(mse.item())
        loss.backward()
        self.opt.step()
        return attr_loss or 0.0, attr_acc, rec

    def privacy_loss(self, z: torch.Tensor, private: torch.Tensor | None, pixels: torch.Tensor) -> torch.Tensor:
        """The encoder's privacy term: adv_weight * sum L_priv - rec_weight * MSE."""
        total = torch.zeros(())
        if self.use_attr:
            for a in self.attackers:
                logits = a(z)
                if self.config.adversary_loss is AdversaryLoss.ENTROPY:
                    uniform = torch.full_like(logits, 1.0 / logits.shape[1])
                    term = F.cross_entropy(logits, uniform)
                else:
                    term = -F.cross_entropy(logits, private)
                total = total + self.config.adv_weight * term
        if self.decoder is not None:
            total = total - self.config.rec_weight * F.mse_loss(self.decoder(z), pixels)
        return total

    def requires_grad(self, flag: bool) -> None:
        for m in [*self.attackers, *([self.decoder] if self.decoder is not None else [])]:
            m.requires_grad_(flag)


@torch.no_grad()
def recalibrate_batchnorm(model: SplitModel, x: torch.Tensor, *, rng: np.random.Generator, part: nn.Module | None = None,
                          max_samples: int = 1024, batch_size: int = 256) -> None:
    """Re-estimate BatchNorm running statistics on a sample of ``x`` ("precise BN").

    With few optimiser steps per epoch the running averages lag far behind the weights, and eval-mode
    accuracy is then meaningless; averaging over a fresh pass with frozen weights fixes it.
    ``part`` limits the update to one sub-module (the server layers during their fine-tune).
    """
    target = part if part is not None else model
    norms = [m for m in target.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.eval()
    target.train()
    sample = x[rng.permutation(len(x))[:max_samples]]
    for i in range(0, len(sample), batch_size):
        model.head(model.features(sample[i : i + batch_size]))
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    model.train(was_training)


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size) if len(order[i : i + batch_size]) > 1]


def _augment(x: torch.Tensor, hflip: bool) -> torch.Tensor:
    if not hflip:
        return x
    flip = torch.rand(len(x)) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def train_split_model(
    model: SplitModel,
    data: Dataset,
    split: Split,
    config: TrainConfig,
    *,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place on the ``members`` part; select on ``reference``; return the history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_all = model.preprocess(data.images)
    pixels_all = torch.as_tensor(data.images).permute(0, 3, 1, 2).float().div_(255.0)
    y_all = torch.as_tensor(data.task_labels)
    p_all = torch.as_tensor(data.private_labels) if data.private is not None else None
    members, reference = split[Part.MEMBERS], split[Part.REFERENCE]
    if len(reference) == 0:  # selection falls back on the members themselves
        reference = members
    x_tr, y_tr, px_tr = x_all[members], y_all[members], pixels_all[members]
    p_tr = p_all[members] if p_all is not None else None
    x_ref, y_ref = x_all[reference], y_all[reference]
    hflip = config.hflip if config.hflip is not None else data.source.split(":")[0] in ("celeba", "utkface")
    num_private = data.num_classes(data.private) if data.private is not None else None

    adv = _Adversaries(model, config, num_private).bind(model)
    adv.reset()
    params = list(model.encoder.parameters()) + list(model.head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(members) / config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch + 1, pct_start=0.15)

    history: list[EpochStats] = []
    best = (-1.0, -1, None)
    for epoch in range(1, config.epochs + 1):
        model.train()
        if adv.active:
            adv.reset()
            adv.requires_grad(True)
            # warm the fresh adversaries up on features of a sample computed once (cheap: no
            # encoder pass per warm-up step), then keep them in step with the encoder below
            pool = rng.permutation(len(members))[: 8 * config.batch_size]
            with torch.no_grad():
                z_pool = torch.cat([model.features(_augment(x_tr[pool[i : i + 256]], hflip)) for i in range(0, len(pool), 256)])
            for _ in range(config.adv_warmup_steps):
                j = rng.integers(0, len(pool), size=min(config.batch_size, len(pool)))
                adv.step(z_pool[j], p_tr[pool[j]] if p_tr is not None else None, px_tr[pool[j]])
        sums = dict(loss=0.0, correct=0, n=0, adv_loss=0.0, adv_acc=0.0, rec=0.0, adv_n=0)
        bar = progress_bar(_batches(len(members), config.batch_size, rng), desc=f"epoch {epoch}/{config.epochs}", enabled=progress)
        for idx in bar:
            x, y = _augment(x_tr[idx], hflip), y_tr[idx]
            p = p_tr[idx] if p_tr is not None else None
            if adv.active:
                with torch.no_grad():
                    z_det = model.features(x)
                for _ in range(config.adv_steps):
                    a_loss, a_acc, rec = adv.step(z_det, p, px_tr[idx])
                sums["adv_loss"] += a_loss
                sums["adv_acc"] += a_acc or 0.0
                sums["rec"] += rec or 0.0
                sums["adv_n"] += 1
                adv.requires_grad(False)
            z = model.features(x)
            logits = model.head(z)
            loss = F.cross_entropy(logits, y)
            if adv.active:
                loss = loss + adv.privacy_loss(z, p, px_tr[idx])
                adv.requires_grad(True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums["loss"] += float(loss.item()) * len(idx)
            sums["correct"] += int((logits.argmax(1) == y).sum())
            sums["n"] += len(idx)
            post = {"acc": f"{sums['correct'] / sums['n']:.3f}"}
            if sums["adv_n"]:
                post["adv_loss"] = f"{sums['adv_loss'] / sums['adv_n']:.3f}"
            bar.set_postfix(post)
        recalibrate_batchnorm(model, x_tr, rng=rng)
        ref_acc = accuracy(model, x_ref, y_ref, noise_seed=seed + 7)
        k = max(1, sums["adv_n"])
        stats = EpochStats(
            epoch=epoch,
            phase="joint",
            task_loss=sums["loss"] / max(1, sums["n"]),
            task_accuracy=sums["correct"] / max(1, sums["n"]),
            reference_accuracy=ref_acc,
            adversary_loss=sums["adv_loss"] / k if adv.use_attr else None,
            adversary_accuracy=sums["adv_acc"] / k if adv.use_attr else None,
            reconstruction_mse=sums["rec"] / k if adv.use_rec else None,
        )
        history.append(stats)
        _log(_describe(stats), progress)
        # The unprotected baseline picks its best epoch on reference; a protected encoder keeps its
        # last epoch (an early epoch is a less private one) and selects among head fine-tune epochs.
        if not config.protected and ref_acc > best[0]:
            best = (ref_acc, epoch, copy.deepcopy(model.state_dict()))
    selected = config.epochs
    if best[2] is not None:
        model.load_state_dict(best[2])
        selected = best[1]
    if config.head_finetune_epochs > 0:
        selected = _finetune_head(model, x_tr, y_tr, x_ref, y_ref, config, rng, hflip, seed, history, progress)
    model.eval()
    return TrainResult(model=model, history=tuple(history), selected_epoch=selected)


def _finetune_head(model, x_tr, y_tr, x_ref, y_ref, config: TrainConfig, rng, hflip, seed, history, progress) -> int:
    """Freeze the encoder and retrain the server layers on fresh channel noise; keep the best on reference."""
    model.encoder.eval()
    model.encoder.requires_grad_(False)
    opt = torch.optim.AdamW(model.head.parameters(), lr=config.lr * 0.25, weight_decay=config.weight_decay)
    best = (accuracy(model, x_ref, y_ref, noise_seed=seed + 7), config.epochs, copy.deepcopy(model.head.state_dict()))
    for e in range(1, config.head_finetune_epochs + 1):
        model.head.train()
        total, correct, n = 0.0, 0, 0
        bar = progress_bar(_batches(len(x_tr), config.batch_size, rng), desc=f"head {e}/{config.head_finetune_epochs}", enabled=progress)
        for idx in bar:
            with torch.no_grad():
                z = model.features(_augment(x_tr[idx], hflip))
            logits = model.head(z)
            loss = F.cross_entropy(logits, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.item()) * len(idx)
            correct += int((logits.argmax(1) == y_tr[idx]).sum())
            n += len(idx)
            bar.set_postfix(acc=f"{correct / n:.3f}")
        recalibrate_batchnorm(model, x_tr, rng=rng, part=model.head)
        ref_acc = accuracy(model, x_ref, y_ref, noise_seed=seed + 7)
        stats = EpochStats(config.epochs + e, "head", total / max(1, n), correct / max(1, n), ref_acc)
        history.append(stats)
        _log(_describe(stats), progress)
        if ref_acc > best[0]:
            best = (ref_acc, config.epochs + e, copy.deepcopy(model.head.state_dict()))
    model.head.load_state_dict(best[2])
    model.encoder.requires_grad_(True)
    return best[1]


def _log(text: str, enabled: bool) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def _describe(s: EpochStats) -> str:
    text = f"  {s.phase} epoch {s.epoch}: task loss {s.task_loss:.3f} acc {s.task_accuracy:.3f} | reference acc {s.reference_accuracy:.3f}"
    if s.adversary_loss is not None:
        text += f" | adversary loss {s.adversary_loss:.3f} acc {s.adversary_accuracy:.3f}"
    if s.reconstruction_mse is not None:
        text += f" | decoder mse {s.reconstruction_mse:.4f}"
    return text
