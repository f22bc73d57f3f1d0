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


@dataclass(frozen=True)
class FeatureProbeSpec:
    """Options of :func:`privsplit.probes.feature_probe.probe_features`.

    The defaults are meant to be strong: the probe is the measure of privacy, so every attacker is
    trained to convergence with its epoch (or C) chosen on a validation slice of the *attacker* data,
    never on holdout. ``epochs`` is the MLP/CNN budget, ``reconstruction_epochs`` the decoder's;
    training stops early after ``patience`` epochs without improvement on validation.
    """

    attackers: tuple[AttributeAttacker, ...] = (
        AttributeAttacker.LOGISTIC,
        AttributeAttacker.MLP,
        AttributeAttacker.CNN,
    )
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "attackers", tuple(AttributeAttacker(a) for a in self.attackers))
        object.__setattr__(self, "logistic_cs", tuple(float(c) for c in self.logistic_cs))
        for name in (
            "epochs",
            "batch_size",
            "patience",
            "cv_folds",
            "reconstruction_epochs",
            "reconstruction_batch_size",
            "encode_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"FeatureProbeSpec.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.validation_fraction < 0.9:
            raise ConfigError(f"validation_fraction must be in (0, 0.9), got {self.validation_fraction}")
        if self.lr <= 0 or self.reconstruction_lr <= 0 or self.weight_decay < 0:
            raise ConfigError("learning rates must be > 0 and weight_decay >= 0")
        if not self.logistic_cs or any(c <= 0 for c in self.logistic_cs):
            raise ConfigError(f"logistic_cs must be positive, got {self.logistic_cs}")
        for name in ("max_attacker", "max_holdout"):
            value = getattr(self, name)
            if value is not None and value < 10:
                raise ConfigError(f"{name} must be >= 10 (or None for all), got {value}")
        if self.num_samples < 0:
            raise ConfigError(f"num_samples must be >= 0, got {self.num_samples}")

    def with_epochs(self, epochs: int) -> FeatureProbeSpec:
        """Same spec with one training budget for every attacker (the CLI's ``--epochs``)."""
        return replace(self, epochs=epochs, reconstruction_epochs=epochs, patience=min(self.patience, epochs))

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureProbeSpec:
        return from_dict(cls, data, strict=True)
