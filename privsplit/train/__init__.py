"""Training: adversarial split-model training (Privacy Partitioning) and the purifier."""

from privsplit.train.adversarial import EpochStats, TrainResult, accuracy, predict
from privsplit.train.collapse import TrainingCollapsed
from privsplit.train.config import AdversaryLoss, AdversaryTarget, PrivacyPreset, TrainConfig
from privsplit.train.loop import train_split_model
from privsplit.train.run import train_run

__all__ = [
    "AdversaryLoss",
    "AdversaryTarget",
    "PrivacyPreset",
    "TrainingCollapsed",
    "TrainConfig",
    "EpochStats",
    "TrainResult",
    "train_split_model",
    "train_run",
    "accuracy",
    "predict",
]
