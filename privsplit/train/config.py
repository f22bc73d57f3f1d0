"""Options of adversarial split-model training (Privacy Partitioning, Chi et al. 1812.02863)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from privsplit.errors import ConfigError
from privsplit.results import from_dict, to_dict
from privsplit.train.membership_defense import MembershipDefense


class AdversaryLoss(str, Enum):
    """What the encoder does to the attribute adversaries' output."""

    ENTROPY = "entropy"  # push the adversaries' posterior to uniform: CE(adversary, uniform)
    NEG_CE = "neg-ce"  # the textbook -CE(adversary, private label); unbounded, weaker in practice


class AdversaryTarget(str, Enum):
    """Where the entropy objective pushes the adversaries' posterior over the private attribute."""

    # p(private | task label) on members: remove only what the attribute says *beyond* the task
    # (Z independent of S given Y, as in conditional fair representations); aims at the task floor
    CONDITIONAL = "conditional"
    UNIFORM = "uniform"  # the uniform distribution: aims at chance, and erases task evidence tied to S


class PrivacyPreset(str, Enum):
    """The common recipes of ``privsplit train --privacy``; every part stays settable by its own flag."""

    BALANCED = "balanced"  # TrainConfig's defaults: aim at the task floor at a bounded task cost
    STRONG = "strong"  # uniform entropy adversaries at a fixed weight: towards chance, whatever the task pays
    OFF = "off"  # the unprotected baseline (TrainConfig.unprotected)


# the protected default of earlier versions, kept as the strong preset
_STRONG = dict(
    adversary_target=AdversaryTarget.UNIFORM,
    adv_weight=3.0,
    warmup_epochs=0,
    distill_weight=0.0,
    leakage_budget=None,
    utility_budget=None,
)


# the objective's fields and what every run written before they existed trained with
_OBJECTIVE_OF_EARLIER_VERSIONS = {k: v for k, v in _STRONG.items() if k != "adv_weight"}

# the guards' fields and what every run written before they existed trained with (no guard)
_GUARDS_OFF = dict(attributes_weight=0.0, guard_attributes="all", identity_weight=0.0, attributes_balanced=True)
# what a run with a guard but without the balance field trained with (the first guards, December 2026)
_GUARDS_OF_EARLIER_VERSIONS = dict(attributes_balanced=False)


@dataclass(frozen=True)
class TrainConfig:
    """Training options. The defaults are the balanced protected recipe (:class:`PrivacyPreset`);
    :meth:`preset` gives the others and :meth:`unprotected` the baseline.

    The first :attr:`warmup` joint epochs train encoder + server layers on the task alone (bottleneck and
    noise on). Then the adversaries join (updated in alternation, ``adv_steps`` steps each per encoder step,
    re-initialised every epoch with ``adv_warmup_steps`` warm-up steps) and the encoder minimises::

        L = CE(task) + w * sum_a L_priv(a) - rec_weight * MSE(decoder(z), x) + distill_weight * KL(teacher || model)

    with ``L_priv = CE(a(z), target)`` (entropy towards ``target``: p(private | task label) for the conditional
    target, uniform otherwise) or ``-CE(a(z), private)``; the teacher is the model at the end of the warm
    start. ``w`` starts at ``adv_weight``; with a ``leakage_budget`` it doubles (up to 4 ``adv_weight``) after an
    epoch whose fresh attackers read more than the aim (max(chance, task floor), or chance for the uniform
    target) + budget on reference features, and returns towards ``adv_weight`` after one under it: the
    configured weight is the pressure that always holds. Only the task lowers it further: it halves (down to
    ``adv_weight / 16``) after an epoch whose reference accuracy is more than ``utility_budget`` under the warm
    start's. ``z`` is the encoder output (unit variance per
    channel) plus Gaussian noise of ``noise_sigma``, which the deployed edge pipeline adds too.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    adv_weight: float = 1.0  # the attribute term's weight (its start, with a leakage budget)
    rec_weight: float = 0.0
    noise_sigma: float = 1.0
    feature_channels: int = 4
    adversary_loss: AdversaryLoss = AdversaryLoss.ENTROPY
    adversary_target: AdversaryTarget = AdversaryTarget.CONDITIONAL
    # first joint epochs train the task alone (noise and bottleneck on, no adversaries): a warm start;
    # None: a quarter of ``epochs`` (see :attr:`warmup`)
    warmup_epochs: int | None = None
    distill_weight: float = 1.0  # KL(warm-start model's task posterior || the model's) during the adversarial epochs
    leakage_budget: float | None = 0.02  # adapt adv_weight per epoch: pressure only above the task floor + this
    # with a leakage budget: the reference accuracy the adversarial epochs may lose against the warm start's last
    # epoch; below it the controller halves the pressure whatever the leakage (the task comes first)
    utility_budget: float | None = 0.01
    # guards (privsplit.train.guards): adversaries for what training never named, off at weight 0
    # every other binary attribute at once, pushed towards p(attribute | task). None: auto, weight 3 where the
    # data has a private attribute and others to guard (CelebA: linkage and the other attributes lower at no task
    # cost), off elsewhere; a run records the weight it trained with (guards.resolve_guards)
    attributes_weight: float | None = None
    guard_attributes: str = "all"  # which ones, with attributes_weight: 'all' binary labels or A,B,...
    # the attribute guard weighs each attribute's two classes equally (a rare hat counts as a common fringe), as
    # balanced accuracy does (3 CelebA seeds at weight 3: worst other attribute +0.056 against +0.081 unweighted)
    attributes_balanced: bool = True
    identity_weight: float = 0.0  # identity linkage: a metric adversary's same-person choice pushed to uniform
    adversaries: tuple[str, ...] = ("cnn", "linear")
    adv_steps: int = 3
    adv_lr: float = 2e-3
    adv_warmup_steps: int = 30
    head_finetune_epochs: int = 5
    hflip: bool | None = None  # None: on for face datasets, off for digits and clothes
    width: int = 32
    split: int | None = None  # encoder blocks; None: the architecture's default for the image size
    arch: str = "small-cnn"
    membership_defense: MembershipDefense = field(default_factory=MembershipDefense)  # see membership_defense.py

    def __post_init__(self) -> None:
        for name, kind in (("adversary_loss", AdversaryLoss), ("adversary_target", AdversaryTarget)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                choices = [k.value for k in kind]
                raise ConfigError(
                    f"unknown {name.replace('_', '-')} {getattr(self, name)!r}; choose from {choices}"
                ) from None
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "adv_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(
                f"warmup-epochs must be in 0..{self.epochs - 1} (fewer than --epochs {self.epochs}), "
                f"got {self.warmup_epochs}"
            )
        if self.utility_budget is not None and not 0 <= self.utility_budget < 1:
            raise ConfigError(f"utility-budget must be in [0, 1) accuracy, got {self.utility_budget}")
        if self.leakage_budget is not None and not 0 <= self.leakage_budget < 0.5:
            raise ConfigError(f"leakage-budget must be in [0, 0.5) balanced accuracy, got {self.leakage_budget}")
        for name in (
            "adv_weight",
            "rec_weight",
            "noise_sigma",
            "weight_decay",
            "distill_weight",
            "attributes_weight",
            "identity_weight",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.membership_defense.is_dp and (self.head_finetune_epochs > 0 or self.rec_weight > 0):
            raise ConfigError(
                "--membership-defense dp-sgd has no head fine-tune and no reconstruction adversary: "
                "add --head-epochs 0 --rec-weight 0 (or --unprotected)"
            )
        guards = [n for n in ("attributes_weight", "identity_weight") if (getattr(self, n) or 0) > 0]
        if self.membership_defense.is_dp and guards:
            flags = " and ".join(f"--{n.replace('_', '-')}" for n in guards)
            raise ConfigError(
                f"--membership-defense dp-sgd trains no guards (its own loop has no adversaries): drop {flags}"
            )
        from privsplit.models import ATTRIBUTE_ATTACKERS

        unknown = [a for a in self.adversaries if a not in ATTRIBUTE_ATTACKERS]
        if unknown:
            raise ConfigError(f"unknown adversaries {unknown}; choose from {sorted(ATTRIBUTE_ATTACKERS)}")

    @property
    def warmup(self) -> int:
        """Warm-start epochs: ``warmup_epochs``, or a quarter of ``epochs`` when that is None."""
        return self.epochs // 4 if self.warmup_epochs is None else self.warmup_epochs

    @property
    def protected(self) -> bool:
        return self.adv_weight > 0 or self.rec_weight > 0 or self.noise_sigma > 0

    @classmethod
    def preset(cls, preset: PrivacyPreset | str, **overrides) -> TrainConfig:
        """The recipe of a :class:`PrivacyPreset`, with ``overrides``."""
        preset = PrivacyPreset(preset)
        if preset is PrivacyPreset.OFF:
            return cls.unprotected(**overrides)
        base = dict(_STRONG) if preset is PrivacyPreset.STRONG else {}
        base.update(overrides)
        return cls(**base)

    @classmethod
    def unprotected(cls, **overrides) -> TrainConfig:
        """The baseline: no adversaries, no channel noise, a wide (32-channel) feature map."""
        base = dict(
            adv_weight=0.0,
            rec_weight=0.0,
            noise_sigma=0.0,
            feature_channels=32,
            head_finetune_epochs=0,
            **_OBJECTIVE_OF_EARLIER_VERSIONS,  # no adversaries: written as earlier versions wrote it
            **_GUARDS_OFF,
        )
        base.update(overrides)
        return cls(**base)

    def with_(self, **changes) -> TrainConfig:
        return replace(self, **changes)

    def to_json(self) -> dict:
        data = to_dict(self)
        if self.membership_defense == MembershipDefense():  # no defence: the config of earlier versions, unchanged
            del data["membership_defense"]
        if all(getattr(self, k) == v for k, v in _GUARDS_OFF.items()):  # no guard: as earlier versions wrote it
            for k in _GUARDS_OFF:
                del data[k]
        if all(getattr(self, k) == v for k, v in _OBJECTIVE_OF_EARLIER_VERSIONS.items()):
            for k in _OBJECTIVE_OF_EARLIER_VERSIONS:  # the earlier objective: the config of earlier versions
                del data[k]
        return data

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        """A config that lacks the objective's fields was written before they existed: it trained the earlier
        objective (uniform target, no warm start, no distillation, a fixed weight), not today's defaults."""
        guards = {**_GUARDS_OFF, **(_GUARDS_OF_EARLIER_VERSIONS if "attributes_weight" in data else {})}
        return from_dict(cls, {**_OBJECTIVE_OF_EARLIER_VERSIONS, **guards, **data})
