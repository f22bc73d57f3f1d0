"""What the feature-leakage probe runs: attackers, their training budget and the data sizes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from privsplit.errors import ConfigError
from privsplit.results import from_dict, to_dict


class AttributeAttacker(str, Enum):
    """The post-hoc attribute attackers on the encoder's features."""

    LOGISTIC = "logistic"  # scikit-learn logistic regression on standardised flat features, C by CV
    MLP = "mlp"  # privsplit.models.MLPAttacker on standardised flat features
    CNN = "cnn"  # privsplit.models.CNNAttacker over the (per-channel standardised) feature map
    # scikit-learn's HistGradientBoostingClassifier on the flat features: a family unlike the
    # adversaries' own networks (trees, not gradients through a CNN/MLP), so a protection tuned
    # against those adversaries cannot pass merely by fooling their architecture
    GBM = "gbm"


POOLED = "members+reference+attacker"  # the learning curve's largest training set (encoder's images included)


def curve_label(fraction: float) -> str:
    """Name of the learning-curve training set holding ``fraction`` of the attacker part."""
    return "attacker" if fraction >= 1.0 else f"attacker-{fraction * 100:g}%"


@dataclass(frozen=True)
class FeatureProbeSpec:
    """Options of :func:`privsplit.probes.feature_probe.probe_features`.

    The defaults are meant to be strong: the probe is the measure of privacy, so every attacker is
    trained to convergence with its epoch (or C) chosen on a validation slice of the *attacker* data,
    never on holdout. ``epochs`` is the MLP/CNN budget, ``reconstruction_epochs`` the decoder's;
    training stops early after ``patience`` epochs without improvement on validation.

    The attacker's data must not be what limits it: every attacker is trained on each ``curve``
    fraction of the ``attacker`` part and (``pooled``) on ``members + reference + attacker``, the
    encoder's own training images included, and always scored on ``holdout``; the headline is the best
    of all of them. The cost grows with the data: about ``sum(curve) + 4`` times one pass over the
    attacker part with the default 0.4/0.2/0.2/0.2 split (``curve=(1.0,)``, ``pooled=False`` is the
    cheapest probe).

    ``null``: also train every attacker, on the same training sets and labels, on features that carry nothing
    (Gaussian noise of the features' shape) and score them on the same holdout. A best-of-N headline on a
    finite holdout reads above chance even then (the winner's curse); the best of that null run is the
    headline's chance level, recorded beside it. It doubles the attribute attackers' cost.
    """

    attackers: tuple[AttributeAttacker, ...] = (
        AttributeAttacker.LOGISTIC,
        AttributeAttacker.MLP,
        AttributeAttacker.CNN,
        AttributeAttacker.GBM,
    )
    curve: tuple[float, ...] = (0.25, 0.5, 1.0)  # learning curve: fractions of the attacker part each attacker sees
    pooled: bool = True  # also train each attacker on members + reference + attacker (always scored on holdout)
    max_pooled: int | None = None  # cap on the pooled training set (seeded subsample); None = all
    gbm_max_iter: int = 200  # boosting rounds of the GBM attacker (early stopping on its validation slice)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 10
    validation_fraction: float = 0.2
    logistic_cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    cv_folds: int = 3
    reconstruction: bool = True
    reconstruction_epochs: int = 30
    reconstruction_batch_size: int = 64
    reconstruction_lr: float = 2e-3
    max_attacker: int | None = None  # cap on attacker images (seeded subsample); None = all
    max_holdout: int | None = None  # cap on holdout images (seeded subsample); None = all
    num_samples: int = 16  # holdout reconstructions kept for the grid plot
    encode_batch_size: int = 256
    seed: int = 0
    null: bool = False  # also the best of the same attackers on noise features: the headline's chance level

    def __post_init__(self) -> None:
        object.__setattr__(self, "attackers", tuple(AttributeAttacker(a) for a in self.attackers))
        object.__setattr__(self, "logistic_cs", tuple(float(c) for c in self.logistic_cs))
        object.__setattr__(self, "curve", tuple(sorted({float(f) for f in self.curve})))
        if not self.curve and not self.pooled:
            raise ConfigError("the feature probe needs a training set: give curve fractions or pooled=True")
        if any(not 0.0 < f <= 1.0 for f in self.curve):
            raise ConfigError(f"curve fractions must be in (0, 1], got {list(self.curve)} (e.g. --curve 0.25,0.5,1)")
        for name in (
            "epochs",
            "batch_size",
            "patience",
            "cv_folds",
            "reconstruction_epochs",
            "reconstruction_batch_size",
            "encode_batch_size",
            "gbm_max_iter",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"FeatureProbeSpec.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.validation_fraction < 0.9:
            raise ConfigError(f"validation_fraction must be in (0, 0.9), got {self.validation_fraction}")
        if self.lr <= 0 or self.reconstruction_lr <= 0 or self.weight_decay < 0:
            raise ConfigError("learning rates must be > 0 and weight_decay >= 0")
        if not self.logistic_cs or any(c <= 0 for c in self.logistic_cs):
            raise ConfigError(f"logistic_cs must be positive, got {self.logistic_cs}")
        for name in ("max_attacker", "max_holdout", "max_pooled"):
            value = getattr(self, name)
            if value is not None and value < 10:
                raise ConfigError(f"{name} must be >= 10 (or None for all), got {value}")
        if self.num_samples < 0:
            raise ConfigError(f"num_samples must be >= 0, got {self.num_samples}")

    def with_epochs(self, epochs: int) -> FeatureProbeSpec:
        """Same spec with one training budget for every attacker (the CLI's ``--epochs``)."""
        return replace(self, epochs=epochs, reconstruction_epochs=epochs, patience=min(self.patience, epochs))

    @property
    def training_sets(self) -> tuple[str, ...]:
        """Names of the learning curve's training sets, smallest first."""
        return tuple(curve_label(f) for f in self.curve) + ((POOLED,) if self.pooled else ())

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureProbeSpec:
        return from_dict(cls, data, strict=True)
