"""``train_run``: dataset spec in, complete run folder out."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from privsplit.data import Part, SplitFractions, load_dataset, make_split
from privsplit.errors import ConfigError
from privsplit.models import Arch, ModelConfig, Norm, build_split_model
from privsplit.run import EVAL_NOISE_OFFSET, DataConfig, RunConfig, RunFolder, noise_note
from privsplit.train import checkpoint as ckpt
from privsplit.train import distributed
from privsplit.train.adversarial import accuracy
from privsplit.train.collapse import TrainingCollapsed, check_collapse
from privsplit.train.config import TrainConfig
from privsplit.train.device import DeviceKind, DevicePolicy, resolve_device
from privsplit.train.guards import describe_guards, guard_labels, resolve_guards
from privsplit.train.loop import Checkpointing, train_split_model

METRICS_SCHEMA_VERSION = 1


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale."""
    x = images.astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = np.maximum(x.std(axis=(0, 1, 2)), 1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def train_run(
    data_spec: str,
    out_dir,
    *,
    task: str | None = None,
    private: str | None = None,
    image_size: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    fractions: SplitFractions = SplitFractions(),
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
    device: DeviceKind | str = DeviceKind.CPU,
    resume: bool = False,
) -> RunFolder:
    """Load the data, split it, train the split model and write the run folder.

    ``device``: where to train (``auto`` picks an accelerator when there is one). Under torchrun
    (``WORLD_SIZE`` > 1) every process calls this and one model is trained with DDP; only rank 0
    writes. An epoch checkpoint is kept in ``RUN/checkpoint/`` while the run is under way;
    ``resume=True`` continues from it.
    """
    started = time.perf_counter()
    run = RunFolder(out_dir)
    if not resume and ckpt.has_checkpoint(run.path):
        raise ConfigError(
            f"{run.path} holds an interrupted run (checkpoint/): continue it with --resume, or choose a new --out"
        )
    target = resolve_device(device, local_rank=distributed.local_rank_from_env())
    created = not distributed.dist.is_initialized()
    dist = distributed.init_from_env(target.type)
    try:
        return _train_run(
            data_spec,
            run,
            task=task,
            private=private,
            image_size=image_size,
            limit=limit,
            seed=seed,
            fractions=fractions,
            config=config,
            progress=progress and dist.is_main,
            resume=resume,
            policy=DevicePolicy.for_device(target),
            dist=dist,
            started=started,
        )
    finally:
        if created:
            distributed.shutdown()


def _train_run(
    data_spec,
    run,
    *,
    task,
    private,
    image_size,
    limit,
    seed,
    fractions,
    config,
    progress,
    resume,
    policy,
    dist,
    started,
) -> RunFolder:
    data = load_dataset(data_spec, task=task, private=private, image_size=image_size, limit=limit)
    split = make_split(len(data), fractions, seed=seed)
    members = split[Part.MEMBERS]
    config = resolve_guards(data, config)  # the attribute guard's auto weight, decided for this data and recorded
    guards = guard_labels(data, config)  # a guard whose labels the data lacks is refused before anything starts
    try:
        arch = Arch(config.arch)
    except ValueError:
        raise ConfigError(f"unknown architecture {config.arch!r}; choose from {[a.value for a in Arch]}") from None
    mean, std = channel_stats(data.images[members])
    model_config = ModelConfig(
        arch=arch,
        in_channels=data.channels,
        image_size=data.image_size,
        num_classes=data.num_classes(data.task),
        split=config.split or ModelConfig.default_split(arch, data.image_size),
        feature_channels=config.feature_channels,
        width=config.width,
        noise_sigma=config.noise_sigma,
        num_private_classes=data.num_classes(data.private) if data.private else None,
        mean=mean,
        std=std,
        norm=Norm.GROUP if config.membership_defense.is_dp else Norm.BATCH,  # DP-SGD: no batch statistics
    )
    torch.manual_seed(seed)
    model = build_split_model(model_config)
    if progress:
        sizes = ", ".join(f"{k} {v}" for k, v in split.sizes().items())
        procs = f", {dist.world} processes" if dist.active else ""
        print(
            f"privsplit train: {data.source} task={data.task} private={data.private} {data.image_size}px, "
            f"{len(data)} images ({sizes}) on {policy.describe()}{procs}, "
            f"membership defence {config.membership_defense.describe()}, {describe_guards(guards)}",
            file=sys.stderr,
            flush=True,
        )
    run_config = RunConfig(
        data=DataConfig(spec=data_spec, task=data.task, private=data.private, image_size=data.image_size, limit=limit),
        model=model_config,
        seed=seed,
        train=config.to_json(),
    )
    identity = json.loads(json.dumps({"run": run_config.to_json(), "split": fractions.as_dict()}))
    if dist.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
    result = train_split_model(
        model,
        data,
        split,
        config,
        seed=seed,
        progress=progress,
        policy=policy,
        dist=dist,
        checkpointing=Checkpointing(run.path, identity, resume=resume),
    )
    _write_digest(result.model, dist)
    if not dist.is_main:
        dist.barrier()  # rank 0 writes the run folder
        return run
    run.write_config(run_config)
    split.save(run.file("split.json"))
    run.save_split_model(result.model)

    x = result.model.preprocess(data.images)
    y = torch.as_tensor(data.task_labels)
    noise_seed = seed + EVAL_NOISE_OFFSET
    metrics = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "task": {
            "name": data.task,
            "accuracy": accuracy(result.model, x[split[Part.HOLDOUT]], y[split[Part.HOLDOUT]], noise_seed=noise_seed),
            "accuracy_members": accuracy(result.model, x[members], y[members], noise_seed=noise_seed),
            "accuracy_reference": accuracy(
                result.model, x[split[Part.REFERENCE]], y[split[Part.REFERENCE]], noise_seed=noise_seed
            ),
            "majority_baseline": float(
                np.bincount(data.task_labels[split[Part.HOLDOUT]]).max() / len(split[Part.HOLDOUT])
            ),
            "noise_sigma": float(model_config.noise_sigma),
            "noise_seed": noise_seed,
        },
        "selected_epoch": result.selected_epoch,
        "train_seconds": round(time.perf_counter() - started, 2),
        "device": policy.describe(),
        "processes": dist.world,
        "history": result.history_json(),
        "membership_defense": {
            **config.membership_defense.to_json(),
            "name": config.membership_defense.name,
            "privacy": getattr(result, "privacy", None),  # DP-SGD: epsilon spent, delta, noise multiplier, ...
        },
    }
    collapse = None
    if config.protected and len(split[Part.REFERENCE]):
        ref_labels = data.task_labels[split[Part.REFERENCE]]
        collapse = check_collapse(
            metrics["history"],
            metrics["task"]["accuracy_reference"],
            float(np.bincount(ref_labels).max() / len(ref_labels)),
        )
        metrics["collapse"] = collapse.to_json()
    run.write_json("metrics.json", metrics)
    ckpt.remove_checkpoint(run.path)
    dist.barrier()
    if collapse is not None and collapse.collapsed:
        raise TrainingCollapsed(collapse.message(str(run.path)))
    if progress:
        t = metrics["task"]
        print(
            f"privsplit train: holdout accuracy {t['accuracy']:.4f} {noise_note(model_config.noise_sigma, noise_seed)} "
            f"(members {t['accuracy_members']:.4f}, majority {t['majority_baseline']:.4f}) -> {run.path}",
            file=sys.stderr,
            flush=True,
        )
    return run


DIGEST_ENV = "PRIVSPLIT_WEIGHT_DIGESTS"  # testing aid: a folder where every rank writes its weights' SHA-256


def _write_digest(model, dist) -> None:
    import hashlib
    import os
    from pathlib import Path

    folder = os.environ.get(DIGEST_ENV)
    if not folder:
        return
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"rank{dist.rank}.sha256").write_text(h.hexdigest())
