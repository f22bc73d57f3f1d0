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


@dataclass(frozen=True)
class TrainConfig:
    """Training options. The defaults are the protected recipe; :meth:`unprotected` is the baseline.

    Loss of the encoder + server layers (adversaries updated in alternation, ``adv_steps`` steps each
    per encoder step, re-initialised every epoch with ``adv_warmup_steps`` warm-up steps)::

        L = CE(task) + adv_weight * sum_a L_priv(a) - rec_weight * MSE(decoder(z), x)

    with ``L_priv = CE(a(z), uniform)`` (entropy maximisation) or ``-CE(a(z), private)``.
    ``z`` is the encoder output (unit variance per channel) plus Gaussian noise of ``noise_sigma``,
    which the deployed edge pipeline adds too.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    adv_weight: float = 3.0
    rec_weight: float = 0.0
    noise_sigma: float = 1.0
    feature_channels: int = 4
    adversary_loss: AdversaryLoss = AdversaryLoss.ENTROPY
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
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "adv_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        for name in ("adv_weight", "rec_weight", "noise_sigma", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.membership_defense.is_dp and (self.head_finetune_epochs > 0 or self.rec_weight > 0):
            raise ConfigError(
                "--membership-defense dp-sgd has no head fine-tune and no reconstruction adversary: "
                "add --head-epochs 0 --rec-weight 0 (or --unprotected)"
            )
        from privsplit.models import ATTRIBUTE_ATTACKERS

        unknown = [a for a in self.adversaries if a not in ATTRIBUTE_ATTACKERS]
        if unknown:
            raise ConfigError(f"unknown adversaries {unknown}; choose from {sorted(ATTRIBUTE_ATTACKERS)}")

    @property
    def protected(self) -> bool:
        return self.adv_weight > 0 or self.rec_weight > 0 or self.noise_sigma > 0

    @classmethod
    def unprotected(cls, **overrides) -> TrainConfig:
        """The baseline: no adversaries, no channel noise, a wide (32-channel) feature map."""
        base = dict(adv_weight=0.0, rec_weight=0.0, noise_sigma=0.0, feature_channels=32, head_finetune_epochs=0)
        base.update(overrides)
        return cls(**base)

    def with_(self, **changes) -> TrainConfig:
        return replace(self, **changes)

    def to_json(self) -> dict:
        data = to_dict(self)
        if self.membership_defense == MembershipDefense():  # no defence: the config of earlier versions, unchanged
            del data["membership_defense"]
        return data

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        return from_dict(cls, data)
