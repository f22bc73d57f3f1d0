"""The adversaries of Privacy Partitioning and the pieces the training loop shares.

Encoder + server layers minimise the task loss while adversaries that see the (noisy) features try
to infer the private attribute and/or reconstruct the input; the two sides are updated in
alternation. What made the post-hoc attacker fail in our measurements (see docs/methods.md): a
narrow bottleneck, Gaussian channel noise, adversaries as strong and as varied as the attackers
(the probe's own CNN and linear architectures, re-initialised every epoch with a warm-up, several
steps per encoder step), and entropy maximisation instead of -CE.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privsplit.models import ATTRIBUTE_ATTACKERS, ReconstructionDecoder, SplitModel, feature_shape
from privsplit.train.config import AdversaryLoss, AdversaryTarget, TrainConfig
from privsplit.train.distributed import DistContext


@dataclass(frozen=True)
class EpochStats:
    """One epoch's figures. ``task_loss`` is the task cross-entropy alone; ``privacy_loss`` the encoder's
    privacy term (``adv_weight * sum L_priv - rec_weight * MSE``); ``total_loss`` their sum, what the
    encoder minimised. ``adversary_loss`` is the adversaries' own cross-entropy on the private label."""

    epoch: int
    phase: str  # "joint" or "head"
    task_loss: float
    task_accuracy: float
    reference_accuracy: float
    adversary_loss: float | None = None
    adversary_accuracy: float | None = None
    reconstruction_mse: float | None = None
    privacy_loss: float | None = None
    total_loss: float | None = None
    adversary_weight: float | None = None  # the attribute term's weight this epoch (moves with a leakage budget)
    reference_leakage: float | None = None  # the epoch's best adversary, balanced accuracy on reference features
    leakage_floor: float | None = None  # the task floor on reference, beside it
    attributes_guard_loss: float | None = None  # the attribute guard's own BCE (privsplit.train.guards)
    identity_guard_loss: float | None = None  # the identity guard's own InfoNCE (chance: ln of the pairs per batch)


@dataclass(frozen=True)
class TrainResult:
    model: SplitModel
    history: tuple[EpochStats, ...]
    selected_epoch: int

    def history_json(self) -> list[dict]:
        return [asdict(h) for h in self.history]


@torch.no_grad()
def task_logits(model: SplitModel, x: torch.Tensor, *, noise_seed: int = 0, batch_size: int = 512) -> torch.Tensor:
    """Task logits of the deployed system (encoder, seeded channel noise, server layers), on the CPU.

    Runs on the model's device; the noise comes from a CPU generator, so it is the same on every device."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(noise_seed)
    out = [
        model.head(model.features(x[i : i + batch_size].to(device), generator=gen)).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out)


def predict(model: SplitModel, x: torch.Tensor, *, noise_seed: int = 0, batch_size: int = 512) -> np.ndarray:
    """Task predictions of the deployed system (the argmax of :func:`task_logits`)."""
    return task_logits(model, x, noise_seed=noise_seed, batch_size=batch_size).argmax(1).numpy()


def accuracy(model: SplitModel, x: torch.Tensor, y: torch.Tensor, *, noise_seed: int = 0) -> float:
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x, noise_seed=noise_seed) == y.cpu().numpy()).mean())


class _Adversaries:
    """Attribute adversaries (+ optional reconstruction decoder), re-initialised every epoch."""

    def __init__(
        self,
        model: SplitModel,
        config: TrainConfig,
        num_private: int | None,
        *,
        dist: DistContext = DistContext(),
        prior: torch.Tensor | None = None,
    ) -> None:
        self.dist = dist
        # (task classes, private classes): p(private | task) on members, the conditional target's rows
        self.weight = config.adv_weight  # the attribute term's weight; the leakage-budget controller moves it
        self._model_config = model.config
        self.device = next(model.parameters()).device
        self.prior = prior.to(self.device) if prior is not None else None
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
            self.attackers = [
                ATTRIBUTE_ATTACKERS[name](self.shape, self.num_private) for name in self.config.adversaries
            ]
        self.decoder = None
        if self.use_rec:
            mc = self._model_config
            self.decoder = ReconstructionDecoder(self.shape, mc.in_channels, mc.image_size)
        for m in self.modules:
            m.to(self.device)
        params = self.parameters()
        self.opt = torch.optim.Adam(params, lr=self.config.adv_lr) if params else None

    @property
    def modules(self) -> list[nn.Module]:
        return [*self.attackers, *([self.decoder] if self.decoder is not None else [])]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]

    def bind(self, model: SplitModel) -> _Adversaries:
        self._model_config = model.config
        return self

    def step(
        self, z: torch.Tensor, private: torch.Tensor | None, pixels: torch.Tensor
    ) -> tuple[float, float | None, float | None]:
        """One optimiser step of every adversary on detached features; returns (attr loss, attr acc, rec mse)."""
        assert self.opt is not None
        self.opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=z.device)
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
        self.dist.average_gradients(self.parameters())  # every rank keeps the same adversaries
        self.opt.step()
        return attr_loss or 0.0, attr_acc, rec

    def privacy_loss(
        self, z: torch.Tensor, private: torch.Tensor | None, pixels: torch.Tensor, task: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The encoder's privacy term: weight * sum L_priv - rec_weight * MSE.

        With the entropy loss, ``L_priv = CE(a(z), target)``: the uniform distribution, or the private attribute's
        distribution within the record's task class (``adversary_target`` conditional; needs ``task``)."""
        total = torch.zeros((), device=z.device)
        if self.use_attr:
            for a in self.attackers:
                logits = a(z)
                if self.config.adversary_loss is AdversaryLoss.ENTROPY:
                    term = F.cross_entropy(logits, self.target(logits, task))
                else:
                    term = -F.cross_entropy(logits, private)
                total = total + self.weight * term
        if self.decoder is not None:
            total = total - self.config.rec_weight * F.mse_loss(self.decoder(z), pixels)
        return total

    def target(self, logits: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        conditional = self.config.adversary_target is AdversaryTarget.CONDITIONAL
        if conditional and self.prior is not None and task is not None:
            return self.prior[task]
        return torch.full_like(logits, 1.0 / logits.shape[1])

    @torch.no_grad()
    def balanced_accuracy(self, z: torch.Tensor, private: torch.Tensor) -> float:
        """The best adversary's balanced accuracy on ``z`` (e.g. reference features): the controller's reading."""
        best = 0.0
        for a in self.attackers:
            a.eval()
            pred = torch.cat([a(z[i : i + 512]).argmax(1) for i in range(0, len(z), 512)])
            a.train()
            best = max(best, balanced_accuracy(pred, private))
        return best

    def requires_grad(self, flag: bool) -> None:
        for m in self.modules:
            m.requires_grad_(flag)


@torch.no_grad()
def recalibrate_batchnorm(
    model: SplitModel,
    x,
    *,
    rng: np.random.Generator,
    part: nn.Module | None = None,
    max_samples: int = 1024,
    batch_size: int = 256,
) -> None:
    """Re-estimate BatchNorm running statistics on a sample of ``x`` ("precise BN").

    ``x``: a float tensor of inputs, or a callable mapping an index array to an input batch (the
    training loop's feeder) and an ``int`` count, as ``(gather, n)``.

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
    gather, n = x if isinstance(x, tuple) else ((lambda idx: x[torch.as_tensor(idx)]), len(x))
    sample = rng.permutation(n)[:max_samples]
    for i in range(0, len(sample), batch_size):
        model.head(model.features(gather(sample[i : i + batch_size])))
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    model.train(was_training)


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """scikit-learn's balanced accuracy (mean recall over the classes present in ``labels``) of two label tensors."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels.cpu().numpy(), pred.cpu().numpy()))


def linear_attack(
    z_train: torch.Tensor, s_train: torch.Tensor, z_test: torch.Tensor, s_test: torch.Tensor, num_classes: int
) -> float:
    """Balanced accuracy on the test features of a class-balanced, L2-regularised logistic regression fitted from
    scratch (L-BFGS) on the standardised flat train features: the leakage-budget controller's fresh attacker."""
    x, xt = z_train.flatten(1).cpu(), z_test.flatten(1).cpu()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x, xt = (x - mean) / std, (xt - mean) / std
    y = s_train.cpu()
    counts = torch.bincount(y, minlength=num_classes).float().clamp_min(1.0)
    weights = len(y) / (num_classes * counts)
    with torch.enable_grad():
        layer = torch.nn.Linear(x.shape[1], num_classes)
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=100, history_size=10)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(layer(x), y, weight=weights) + 1e-2 * layer.weight.pow(2).sum() / len(y)
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        pred = layer(xt).argmax(1)
    return balanced_accuracy(pred, s_test)


def next_adversary_weight(weight: float, *, base: float, leakage: float, limit: float, task_dropped: bool) -> float:
    """The leakage-budget controller's next weight. ``base`` (the configured ``adv_weight``) is the pressure that
    always holds while the task does: the weight doubles (up to ``4 base``) after an epoch whose fresh attackers
    read more than ``limit`` (aim + budget) and returns towards ``base`` (halving from above, doubling from below)
    after one under it. Whatever the leakage, it halves (down to ``base / 16``) after an epoch whose reference
    accuracy fell more than the utility budget under the warm start's: the task comes first."""
    if task_dropped:
        return float(max(base / 16, weight / 2))
    if leakage > limit:
        return float(min(base * 4, weight * 2))
    return float(max(base, weight / 2)) if weight >= base else float(min(base, weight * 2))


def conditional_prior(task: np.ndarray, private: np.ndarray, num_task: int, num_private: int) -> torch.Tensor:
    """``p(private | task)`` from ``task``/``private`` label arrays (add-one smoothed): (num_task, num_private)."""
    counts = np.ones((num_task, num_private))
    np.add.at(counts, (task, private), 1.0)
    return torch.as_tensor(counts / counts.sum(1, keepdims=True), dtype=torch.float32)


def task_floor(prior: torch.Tensor, task: np.ndarray, private: np.ndarray, num_private: int) -> float:
    """Balanced accuracy on ``private`` of the class-balanced guess from each record's task class alone."""
    marginal = torch.as_tensor(np.bincount(private, minlength=num_private) + 1.0, dtype=torch.float32)
    pred = (prior / marginal).argmax(1)[torch.as_tensor(task)]
    return balanced_accuracy(pred, torch.as_tensor(private))


def log(text: str, enabled: bool) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def describe(s: EpochStats) -> str:
    """One log line per epoch; every loss is named (the task CE is not the total the encoder minimised)."""
    text = f"  {s.phase} epoch {s.epoch}: task CE {s.task_loss:.3f} acc {s.task_accuracy:.3f}"
    if s.privacy_loss is not None:
        text += f" | privacy term {s.privacy_loss:+.3f} total loss {s.total_loss:.3f}"
    text += f" | reference acc {s.reference_accuracy:.3f}"
    if s.adversary_loss is not None:
        text += f" | adversary CE {s.adversary_loss:.3f} acc {s.adversary_accuracy:.3f}"
    if s.reconstruction_mse is not None:
        text += f" | decoder MSE {s.reconstruction_mse:.4f}"
    if s.attributes_guard_loss is not None:
        text += f" | attribute guard BCE {s.attributes_guard_loss:.3f}"
    if s.identity_guard_loss is not None:
        text += f" | identity guard NCE {s.identity_guard_loss:.3f}"
    if s.reference_leakage is not None:
        text += f" | reference leakage {s.reference_leakage:.3f} (aim {s.leakage_floor:.3f})"
        text += f" weight {s.adversary_weight:g}"
    return text
