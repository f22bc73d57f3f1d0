"""DP-SGD training of a split model through Opacus (``--membership-defense dp-sgd``).

Opacus computes per-record gradients, clips each to ``dp_max_grad_norm``, adds Gaussian noise whose
multiplier is calibrated (RDP accountant) so that the whole run — ``epochs`` passes of Poisson-sampled
batches with rate ``batch_size / members`` — spends ``dp_epsilon`` at ``dp_delta``; the epsilon actually
spent is read back from the accountant and recorded with the noise multiplier, clipping bound and
sampling rate (``metrics.json`` -> ``membership_defense``).

BatchNorm mixes the records of a batch, which per-record gradients cannot allow: the run's model is
built with GroupNorm (``ModelConfig.norm = group``; :func:`privsplit.models.split.group_norms`, the
replacement Opacus's ``ModuleValidator.fix`` makes), so the saved run reloads without Opacus.
Selection among epochs uses ``reference`` accuracy (non-member data, post-processing of iterates the
accountant already covers). One process, no adversaries, no head fine-tune, no resume: each would
need its own privacy accounting.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from privsplit.data import Dataset, Part, Split
from privsplit.errors import ConfigError, require
from privsplit.models import Norm, SplitModel
from privsplit.progress import progress_bar
from privsplit.train.adversarial import EpochStats, TrainResult, describe, log, predict
from privsplit.train.config import TrainConfig
from privsplit.train.device import BatchFeeder, DevicePolicy
from privsplit.train.distributed import DistContext


@dataclass(frozen=True)
class DPTrainResult(TrainResult):
    """A DP-SGD run's result: the spent budget beside the model and history."""

    privacy: dict[str, Any] = field(default_factory=dict)


def check_dp_config(config: TrainConfig, *, private: str | None, dist: DistContext, members: int) -> None:
    """Refuse what DP-SGD's accounting does not cover, with the fix in the message."""
    d = config.membership_defense
    if dist.active:
        raise ConfigError("--membership-defense dp-sgd trains in one process: drop --nproc")
    if config.adv_weight > 0 and private is not None:
        raise ConfigError(
            "--membership-defense dp-sgd trains without attribute adversaries: add --adv-weight 0 (or --unprotected)"
        )
    if d.dp_delta >= 1.0 / members:
        raise ConfigError(
            f"--dp-delta {d.dp_delta:g} is not below 1/members (1/{members}): a meaningful guarantee needs "
            f"delta < {1.0 / members:.3g}"
        )


def train_dp(
    model: SplitModel,
    data: Dataset,
    split: Split,
    config: TrainConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    policy: DevicePolicy | None = None,
    dist: DistContext = DistContext(),
) -> DPTrainResult:
    """Train ``model`` (built with GroupNorm) with DP-SGD on ``members``; select on ``reference``."""
    with warnings.catch_warnings():
        # Opacus's notes, not problems here: seeded (non-cryptographic) noise keeps runs reproducible,
        # and the first layer's inputs (the images) need no gradient
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        return _train_dp(model, data, split, config, seed=seed, progress=progress, policy=policy, dist=dist)


def _train_dp(model, data, split, config, *, seed, progress, policy, dist) -> DPTrainResult:
    opacus = require("opacus", package="opacus", extra="dp")
    from opacus.validators import ModuleValidator

    d = config.membership_defense
    members, reference = split[Part.MEMBERS], split[Part.REFERENCE]
    check_dp_config(config, private=data.private, dist=dist, members=len(members))
    if model.config.norm is not Norm.GROUP:
        raise ConfigError("DP-SGD needs the model built with GroupNorm (ModelConfig norm='group'); train_run does so")
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"Opacus cannot train this model: {errors[0]}")
    if len(reference) == 0:
        reference = members
    policy = policy or DevicePolicy(torch.device("cpu"))
    device = policy.device
    model.to(device)
    feeder = BatchFeeder(data.images, model.mean.flatten(), model.std.flatten(), policy)
    y_all = torch.as_tensor(data.task_labels).to(device)
    x_mem, y_mem = feeder.gather(members), y_all[torch.as_tensor(members).to(device)]
    x_ref, y_ref = feeder.gather(reference), y_all[torch.as_tensor(reference).to(device)]

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_mem, y_mem), batch_size=config.batch_size, shuffle=True, generator=gen
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    engine = opacus.PrivacyEngine(accountant="rdp")
    net, optimizer, loader = engine.make_private_with_epsilon(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        target_epsilon=d.dp_epsilon,
        target_delta=d.dp_delta,
        epochs=config.epochs,
        max_grad_norm=d.dp_max_grad_norm,
        noise_generator=torch.Generator(device=device).manual_seed(seed + 1),
    )
    history: list[EpochStats] = []
    best = (-1.0, config.epochs, None)  # reference accuracy, epoch, state
    steps = 0
    for epoch in range(1, config.epochs + 1):
        net.train()
        sums = np.zeros(3)  # ce*n, correct, n
        bar = progress_bar(loader, desc=f"dp-sgd epoch {epoch}/{config.epochs}", enabled=progress)
        for x, y in bar:
            if len(y) == 0:  # Poisson sampling may draw an empty batch (p ~ (1 - q)^n): nothing released
                continue
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            sums += (float(loss.item()) * len(y), int((logits.argmax(1) == y).sum()), len(y))
        ref_acc = float((predict(model, x_ref, noise_seed=seed + 7) == y_ref.cpu().numpy()).mean())
        n = max(1.0, sums[2])
        stats = EpochStats(epoch, "joint", sums[0] / n, sums[1] / n, ref_acc)
        history.append(stats)
        log(describe(stats) + f" | epsilon {engine.get_epsilon(d.dp_delta):.2f}", progress)
        if not config.protected and ref_acc > best[0]:
            best = (ref_acc, epoch, copy.deepcopy(model.state_dict()))
    epsilon = float(engine.get_epsilon(d.dp_delta))
    net._close()  # remove Opacus's hooks and per-record gradients: ``model`` is a plain module again
    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval().cpu()
    privacy = {
        "epsilon": epsilon,
        "delta": d.dp_delta,
        "target_epsilon": d.dp_epsilon,
        "noise_multiplier": float(optimizer.noise_multiplier),
        "max_grad_norm": d.dp_max_grad_norm,
        "sample_rate": float(getattr(loader, "sample_rate", 1.0 / len(loader))),
        "steps": steps,
        "accountant": "rdp",
    }
    return DPTrainResult(model=model, history=tuple(history), selected_epoch=best[1], privacy=privacy)
