"""Split models (encoder + server layers), adversaries and the purifier. Imports torch."""

from privsplit.models.adversaries import (
    ATTRIBUTE_ATTACKERS,
    CNNAttacker,
    LinearAttacker,
    MLPAttacker,
    ReconstructionDecoder,
)
from privsplit.models.config import Arch, ModelConfig
from privsplit.models.split import Encoder, ServerLayers, SplitModel, build_split_model, feature_shape

__all__ = [
    "Arch",
    "ModelConfig",
    "Encoder",
    "ServerLayers",
    "SplitModel",
    "build_split_model",
    "feature_shape",
    "ATTRIBUTE_ATTACKERS",
    "LinearAttacker",
    "MLPAttacker",
    "CNNAttacker",
    "ReconstructionDecoder",
]
