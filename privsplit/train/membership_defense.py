"""Training-side membership defences: what ``privsplit train --membership-defense NAME`` offers.

The output probe's label floor (the overfit model's own member/non-member accuracy gap) bounds every
purifier that keeps labels; these defences shrink the gap itself, during training:

* ``none``: plain cross-entropy (the default).
* ``relaxloss``: RelaxLoss (Chen, Yu & Fritz, ICLR 2022). While the batch's mean cross-entropy is above
  the target ``alpha`` it is minimised as usual; once below, steps alternate between gradient ascent
  toward ``alpha`` (``|CE - alpha|``) and *posterior flattening* of the correctly classified records
  (their target keeps the true class's current probability and spreads the rest uniformly), so member
  losses and score shapes stay where non-members' are.
* ``dp-sgd``: differentially private SGD through Opacus (:mod:`privsplit.train.dpsgd`): per-record
  gradient clipping to ``max_grad_norm``, Gaussian noise calibrated to spend ``epsilon`` at ``delta``
  over the run (Poisson-sampled batches, RDP accountant). BatchNorm mixes records, so the model is
  built with GroupNorm (:attr:`privsplit.models.Norm.GROUP`) and the run records so.
* ``selena``: SELENA-style self-distillation (Tang et al., USENIX Security 2022;
  :mod:`privsplit.train.selena`): ``selena_teachers`` teachers, each trained without a share of the
  members (every member is left out of ``selena_held_out`` of them); the deployed model then trains on
  every member with the mean score of the teachers that never saw it as its target (mixed with a
  ``selena_label_weight`` share of its true label), so it answers on members much as on unseen
  records. Costs ``selena_teachers`` + 1 trainings.
* ``recommended``: an alias of :data:`RECOMMENDED`, the one the README recommends; a run records the
  real name.

Every option is keyword-only and validated here; the CLI maps flags onto :meth:`MembershipDefense.parse`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

from privsplit.errors import ConfigError
from privsplit.results import from_dict, to_dict


class DefenseKind(str, Enum):
    NONE = "none"
    RELAXLOSS = "relaxloss"
    DP_SGD = "dp-sgd"
    SELENA = "selena"


RECOMMENDED = DefenseKind.SELENA
ALIAS = "recommended"
NAMES = tuple(k.value for k in DefenseKind) + (ALIAS,)
SUMMARY = {
    DefenseKind.NONE: "plain cross-entropy",
    DefenseKind.RELAXLOSS: "RelaxLoss: keep the training loss near alpha (ascent + posterior flattening)",
    DefenseKind.DP_SGD: "DP-SGD (Opacus): per-record clipping + Gaussian noise, epsilon recorded",
    DefenseKind.SELENA: "SELENA: teachers that never saw a member give its soft label; the model distils them",
}
# the options each defence takes (the CLI's flags are these names with '-' for '_')
PARAMS = {
    DefenseKind.NONE: (),
    DefenseKind.RELAXLOSS: ("relax_alpha",),
    DefenseKind.DP_SGD: ("dp_epsilon", "dp_delta", "dp_max_grad_norm"),
    DefenseKind.SELENA: ("selena_teachers", "selena_held_out", "selena_label_weight"),
}


@dataclass(frozen=True)
class MembershipDefense:
    """Which defence and its hyper-parameters (tuned on ``reference`` only; see the benchmark).

    ``relax_alpha``: RelaxLoss's target cross-entropy. ``dp_epsilon``/``dp_delta``: the privacy budget
    the whole run spends; ``dp_max_grad_norm``: the per-record clipping bound. ``selena_teachers``: SELENA's
    teacher count; ``selena_held_out``: how many of them never see a given member (1 .. teachers - 1);
    ``selena_label_weight``: the true label's share in a member's target (0: the teachers' answer alone).
    """

    kind: DefenseKind = DefenseKind.NONE
    relax_alpha: float = 1.0
    dp_epsilon: float = 8.0
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    selena_teachers: int = 10
    selena_held_out: int = 1
    selena_label_weight: float = 0.3

    def __post_init__(self) -> None:
        if not isinstance(self.kind, DefenseKind):
            raise ConfigError(f"unknown membership defence {self.kind!r}; choose from {', '.join(NAMES)}")
        for name in ("selena_teachers", "selena_held_out"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))
            elif not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}")
        if self.selena_teachers < 2:
            raise ConfigError(f"--selena-teachers must be at least 2, got {self.selena_teachers}")
        if not 1 <= self.selena_held_out < self.selena_teachers:
            raise ConfigError(
                f"--selena-held-out must be between 1 and --selena-teachers - 1 ({self.selena_teachers - 1}), "
                f"got {self.selena_held_out}"
            )
        checks = {
            "relax_alpha": self.relax_alpha > 0,
            "dp_epsilon": self.dp_epsilon > 0,
            "dp_delta": 0 < self.dp_delta < 1,
            "dp_max_grad_norm": self.dp_max_grad_norm > 0,
            "selena_label_weight": 0 <= self.selena_label_weight < 1,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                bound = {"dp_delta": "in (0, 1)", "selena_label_weight": "in [0, 1)"}.get(name, "> 0")
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number {bound}, got {value}")

    @property
    def name(self) -> str:
        return self.kind.value

    @property
    def is_dp(self) -> bool:
        return self.kind is DefenseKind.DP_SGD

    @classmethod
    def parse(cls, name: str, **params: float | None) -> MembershipDefense:
        """``name`` (``recommended`` resolves to :data:`RECOMMENDED`) with the options given (``None``: default).

        An option of another defence is an error, not silently ignored."""
        if name == ALIAS:
            kind = RECOMMENDED
        else:
            try:
                kind = DefenseKind(name)
            except ValueError:
                raise ConfigError(f"unknown membership defence {name!r}; choose from {', '.join(NAMES)}") from None
        given = {k: v for k, v in params.items() if v is not None}
        unknown = sorted(set(given) - {p for ps in PARAMS.values() for p in ps})
        if unknown:
            raise ConfigError(f"unknown membership-defence options {unknown}")
        foreign = sorted(set(given) - set(PARAMS[kind]))
        if foreign:
            flags = ", ".join("--" + f.replace("_", "-") for f in foreign)
            owners = sorted({k.value for k, ps in PARAMS.items() for f in foreign if f in ps})
            raise ConfigError(f"{flags} only applies to --membership-defense {' / '.join(owners)}, not {kind.value}")
        return cls(kind=kind, **given)

    def describe(self) -> str:
        """One line for logs and reports: the name and the options that matter for it."""
        opts = ", ".join(f"{p.replace('_', '-')}={getattr(self, p):g}" for p in PARAMS[self.kind])
        return self.name + (f" ({opts})" if opts else "")

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> MembershipDefense:
        return from_dict(cls, data)


TaskLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def plain_loss(logits: torch.Tensor, y: torch.Tensor, ce: torch.Tensor, step: int) -> torch.Tensor:
    return ce


def relaxloss(logits: torch.Tensor, y: torch.Tensor, ce: torch.Tensor, step: int, *, alpha: float) -> torch.Tensor:
    """RelaxLoss's objective for one batch; ``ce`` is the batch's mean cross-entropy of ``logits``."""
    if float(ce.detach()) > alpha:
        return ce
    if step % 2 == 0:
        return (ce - alpha).abs()  # gradient ascent back up to alpha
    k = logits.shape[1]
    probs = torch.softmax(logits.detach(), dim=1)
    onehot = F.one_hot(y, k).to(logits.dtype)
    p_true = (probs * onehot).sum(1, keepdim=True)
    flat = onehot * p_true + (1 - onehot) * (1 - p_true) / max(1, k - 1)
    correct = (probs.argmax(1) == y).unsqueeze(1)
    target = torch.where(correct, flat, onehot)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def task_loss(defense: MembershipDefense) -> TaskLoss:
    """The task loss the training loop minimises under ``defense`` (DP-SGD changes the optimiser, not this)."""
    if defense.kind is DefenseKind.RELAXLOSS:
        alpha = defense.relax_alpha
        return lambda logits, y, ce, step: relaxloss(logits, y, ce, step, alpha=alpha)
    return plain_loss
