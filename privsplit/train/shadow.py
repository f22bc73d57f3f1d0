"""Shadow classifiers: the run's own architecture and recipe, trained on records the attacker holds."""

from __future__ import annotations

import numpy as np
import torch

from privsplit.data import Dataset, Part, Split, SplitFractions
from privsplit.models import SplitModel, build_split_model
from privsplit.run import RunConfig
from privsplit.train.config import TrainConfig
from privsplit.train.device import DevicePolicy
from privsplit.train.loop import train_split_model

__all__ = ["train_shadow"]


def train_shadow(
    run_config: RunConfig,
    data: Dataset,
    in_idx: np.ndarray,
    out_idx: np.ndarray,
    *,
    seed: int,
    epochs: int | None,
    device: torch.device = torch.device("cpu"),
) -> SplitModel:
    """A shadow classifier: the run's architecture and recipe, trained on ``in_idx`` (selection on ``out_idx``).

    It trains on ``device`` as ``privsplit train --device`` would (bfloat16 autocast on CUDA) and is returned
    on that device, in eval mode."""
    recipe = TrainConfig.from_json(run_config.train) if run_config.train else TrainConfig.unprotected()
    if epochs is not None:
        recipe = recipe.with_(epochs=epochs)
    sub = data.subset(np.r_[in_idx, out_idx])
    n_in = len(in_idx)
    empty = np.zeros(0, dtype=np.int64)
    split = Split(
        n=len(sub),
        seed=seed,
        fractions=SplitFractions(),
        indices={
            Part.MEMBERS: np.arange(n_in),
            Part.REFERENCE: np.arange(n_in, len(sub)),
            Part.HOLDOUT: empty,
            Part.ATTACKER: empty,
        },
    )
    torch.manual_seed(seed)
    model = build_split_model(run_config.model)
    policy = DevicePolicy.for_device(torch.device(device))
    trained = train_split_model(model, sub, split, recipe, seed=seed, progress=False, policy=policy).model
    return trained.to(device).eval()
