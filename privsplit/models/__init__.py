"""Split models (encoder + server layers), adversaries and the purifier. Imports torch."""

from privsplit.models.adversaries import (
    ATTRIBUTE_ATTACKERS,
    CNNAttacker,
    LinearAttacker,
    MLPAttacker,
    ReconstructionDecoder,
)
from privsplit.models.config import Arch, ModelConfig, Norm
from privsplit.models.split import (
    SCORE_BATCH,
    Encoder,
    ServerLayers,
    SplitModel,
    build_split_model,
    channel_noise,
    feature_shape,
)

__all__ = [
    "Arch",
    "Norm",
    "ModelConfig",
    "Encoder",
    "ServerLayers",
    "SplitModel",
    "build_split_model",
    "feature_shape",
    "channel_noise",
    "SCORE_BATCH",
    "ATTRIBUTE_ATTACKERS",
    "LinearAttacker",
    "MLPAttacker",
    "CNNAttacker",
    "ReconstructionDecoder",
]
