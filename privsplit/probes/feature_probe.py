"""The feature-leakage probe: what an eavesdropper or the cloud learns from the features sent.

Fresh attackers are trained *after* training on the frozen encoder's features and scored on ``holdout``:
attribute inference (logistic regression, MLP, CNN, gradient boosting) beside chance and the task floor,
and reconstruction beside the mean-image baseline. A real cloud operator owns more labelled images than
our ``attacker`` part, so each attacker follows a learning curve (25/50/100% of ``attacker``, then
``members + reference + attacker``) and the headline is the best over all of them. With ``spec.null`` the
same attackers also run on noise features: the best of them is the headline's chance level on this holdout.

The encoder is any function ``uint8 (N, H, W, C) -> features (N, C, h, w)``, so the same probe runs
on the torch model (:func:`torch_encoder_fn`) and on exported TFLite/ONNX artefacts. The function must
include the channel noise the deployed system adds; any numeric dtype (e.g. int8 wire features) is
accepted and converted to float32 (the attackers standardise their inputs, so scale does not matter).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from privsplit.data import Dataset, Part, Split
from privsplit.errors import ConfigError, DataError, RunError
from privsplit.probes._fit import use_device
from privsplit.probes.attribute_attack import attack_attribute
from privsplit.probes.feature_results import (
    AttackerScore,
    AttributeLeakage,
    FeatureLeakageResult,
    ReconstructionLeakage,
    ReconstructionSamples,
)
from privsplit.probes.feature_spec import POOLED, AttributeAttacker, FeatureProbeSpec, curve_label
from privsplit.probes.frames import Frames, averaged_encoder
from privsplit.probes.reconstruction_attack import attack_reconstruction

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from privsplit.models import SplitModel

Encoder = Callable[[np.ndarray], np.ndarray]

__all__ = [
    "AttackerScore",
    "AttributeAttacker",
    "AttributeLeakage",
    "FeatureLeakageResult",
    "FeatureProbeSpec",
    "ReconstructionLeakage",
    "ReconstructionSamples",
    "encode_images",
    "probe_features",
    "probe_run_features",
    "torch_encoder_fn",
    "torch_task_accuracy",
]


def torch_encoder_fn(model: SplitModel, *, seed: int = 0, batch_size: int = 256, noise: bool = True) -> Encoder:
    """``images -> model.features(model.preprocess(images), noise=True)`` as numpy, under ``no_grad``.

    The model is put in eval mode and runs where its weights are. The channel noise comes from one CPU
    generator seeded with ``seed`` that advances across calls, so repeated calls draw fresh noise (as the
    device does) yet the whole sequence is reproducible, and the same on every torch device.
    """
    import torch

    model.eval()
    generator = torch.Generator().manual_seed(seed)

    def encode(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = model.preprocess(images[start : start + batch_size])
                out.append(model.features(x, noise=noise, generator=generator).cpu().numpy())
        return np.concatenate(out)

    return encode


def torch_task_accuracy(model: SplitModel, data: Dataset, *, seed: int = 0) -> float:
    """Task accuracy of the full model on ``data`` with the channel noise on (what the deployment delivers).

    Scored by :meth:`SplitModel.scores`; with the run's ``eval_noise_seed`` on its holdout this is the holdout
    accuracy ``privsplit train`` recorded."""
    from sklearn.metrics import accuracy_score

    predictions = model.scores(data.images, noise_seed=seed).argmax(1)
    return float(accuracy_score(data.task_labels, predictions))


def encode_images(
    encode: Encoder, images: np.ndarray, *, batch_size: int = 256, desc: str = "encode", progress: bool = True
) -> np.ndarray:
    """Run ``encode`` over ``images`` in batches; check and return ``float32 (N, C, h, w)`` features.

    2-D outputs ``(N, D)`` are read as ``(N, D, 1, 1)``.
    """
    return _encode(encode, images, batch_size=batch_size, desc=desc, progress=progress)[0]


def _encode(
    encode: Encoder, images: np.ndarray, *, batch_size: int, desc: str, progress: bool
) -> tuple[np.ndarray, str]:
    """Features as float32 and the dtype the encoder returned them in."""
    from privsplit.progress import progress_bar

    chunks = []
    starts = range(0, len(images), batch_size)
    for start in progress_bar(starts, desc=desc, enabled=progress):
        batch = images[start : start + batch_size]
        out = np.asarray(encode(batch))
        if out.shape[:1] != (len(batch),):
            raise DataError(f"the encoder returned {out.shape[:1]} rows for a batch of {len(batch)} images")
        if not (np.issubdtype(out.dtype, np.number) or out.dtype == np.bool_):
            raise DataError(f"the encoder returned non-numeric features of dtype {out.dtype}")
        if chunks and out.shape[1:] != chunks[0].shape[1:]:
            raise DataError(f"the encoder returned features of shape {out.shape[1:]} after {chunks[0].shape[1:]}")
        chunks_dtype = out.dtype
        chunks.append(out.astype(np.float32, copy=False))
    features = np.concatenate(chunks)
    if features.ndim == 2:
        features = features[:, :, None, None]
    if features.ndim != 4:
        raise DataError(f"features must be (N, C, h, w) or (N, D), the encoder returned shape {features.shape}")
    if not np.isfinite(features).all():
        raise DataError("the encoder returned NaN or infinite features")
    return features, str(chunks_dtype)


def _part(split: Split, part: Part, cap: int | None, seed: int) -> np.ndarray:
    index = split[part]
    if cap is not None and len(index) > cap:
        index = np.sort(np.random.default_rng(seed).choice(index, size=cap, replace=False))
    return index


def _part_of(split: Split, parts: tuple[Part, ...], cap: int | None, taken: int, seed: int) -> np.ndarray:
    """Indices of ``parts``, subsampled (seeded) so that ``taken`` + them stays within ``cap``."""
    index = np.sort(np.concatenate([split[p] for p in parts]))
    room = None if cap is None else max(0, cap - taken)
    if room is not None and len(index) > room:
        index = np.sort(np.random.default_rng(seed).choice(index, size=room, replace=False))
    return index


def _training_sets(
    spec: FeatureProbeSpec, f_att: np.ndarray, y_att: np.ndarray, f_big: np.ndarray, y_big: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The learning curve: nested seeded fractions of the attacker part, then the pooled set."""
    order = np.random.default_rng(spec.seed + 5).permutation(len(f_att))
    sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for fraction in spec.curve:
        n = len(f_att) if fraction >= 1.0 else int(round(fraction * len(f_att)))
        if n < 10:
            raise ConfigError(
                f"{curve_label(fraction)} holds {n} images, under the 10 an attacker needs: use larger --curve "
                "fractions or a larger attacker share (--split)"
            )
        idx = np.sort(order[:n])
        if len(np.unique(y_att[idx])) < 2:
            raise ConfigError(
                f"{curve_label(fraction)} ({n} images) holds one class of the private attribute only: use larger "
                "--curve fractions or more data"
            )
        sets[curve_label(fraction)] = (f_att[idx], y_att[idx])
    if spec.pooled:
        sets[POOLED] = (f_big, y_big)
    return sets


def _with_null(
    attribute: AttributeLeakage,
    attack: Callable[[np.ndarray, np.ndarray, np.ndarray], AttributeLeakage],
    f_big: np.ndarray,
    f_hold: np.ndarray,
    n_attacker: int,
    *,
    seed: int,
) -> AttributeLeakage:
    """``attribute`` with the null reading: every attacker again, on standard Gaussian features of the same shapes
    (same training sets, labels and holdout), the best of them recorded. The pooled set starts with the attacker
    part, so the attacker part's null features are its first rows, as for the real ones."""
    rng = np.random.default_rng([seed, 0x6E756C6C])
    z_big = rng.standard_normal(f_big.shape).astype(np.float32)
    z_hold = rng.standard_normal(f_hold.shape).astype(np.float32)
    null = attack(z_big[:n_attacker], z_big, z_hold)
    return replace(attribute, null_balanced_accuracy=null.balanced_accuracy, null_best=null.best)


def probe_features(
    encode: Encoder,
    data: Dataset,
    split: Split,
    *,
    spec: FeatureProbeSpec = FeatureProbeSpec(),
    progress: bool = True,
    device: torch.device | str | None = None,
) -> FeatureLeakageResult:
    """Train fresh attackers on ``encode``'s features (learning curve: ``spec.curve`` fractions of the attacker
    part, and ``members + reference + attacker`` when ``spec.pooled``); score them all on holdout.

    The attackers train on ``device`` (default the CPU, the reference; the result records it).

    Attribute inference runs when ``data`` has a private attribute (else ``attribute`` is None);
    reconstruction runs when ``spec.reconstruction``. ``task_accuracy`` is left None: fill it with
    :meth:`FeatureLeakageResult.with_task_accuracy` from the full model (see :func:`torch_task_accuracy`).
    """
    started = time.perf_counter()
    device = use_device(device)
    if split.n != len(data):
        raise RunError(f"the split was made for {split.n} items but the dataset holds {len(data)}")
    attacker_idx = _part(split, Part.ATTACKER, spec.max_attacker, spec.seed)
    holdout_idx = _part(split, Part.HOLDOUT, spec.max_holdout, spec.seed + 1)
    for part, index in ((Part.ATTACKER, attacker_idx), (Part.HOLDOUT, holdout_idx)):
        if len(index) < 10:
            raise ConfigError(
                f"the split's {part.value} part holds {len(index)} images; the feature probe needs at least 10 "
                "(train with a larger --split share for it, e.g. --split 0.4,0.2,0.2,0.2)"
            )
    attacker, holdout = data.subset(attacker_idx), data.subset(holdout_idx)
    f_att, dtype = _encode(
        encode, attacker.images, batch_size=spec.encode_batch_size, desc="encode attacker", progress=progress
    )
    f_hold, _ = _encode(
        encode, holdout.images, batch_size=spec.encode_batch_size, desc="encode holdout", progress=progress
    )
    if f_att.shape[1:] != f_hold.shape[1:]:
        raise DataError(f"the encoder returned shapes {f_att.shape[1:]} and {f_hold.shape[1:]} for two batches")
    # the largest training set: members + reference + attacker (the encoder's own training images included)
    f_big, big = f_att, attacker
    if spec.pooled:
        extra_idx = _part_of(split, (Part.MEMBERS, Part.REFERENCE), spec.max_pooled, len(attacker_idx), spec.seed + 2)
        if len(extra_idx):
            extra = data.subset(extra_idx)
            f_extra, _ = _encode(
                encode,
                extra.images,
                batch_size=spec.encode_batch_size,
                desc="encode members+reference",
                progress=progress,
            )
            if f_extra.shape[1:] != f_att.shape[1:]:
                raise DataError(f"the encoder returned shapes {f_att.shape[1:]} and {f_extra.shape[1:]}")
            f_big, big = np.concatenate([f_att, f_extra]), data.subset(np.concatenate([attacker_idx, extra_idx]))

    attribute = None
    if data.private is not None:

        def attack(z_att: np.ndarray, z_big: np.ndarray, z_hold: np.ndarray) -> AttributeLeakage:
            return attack_attribute(
                _training_sets(spec, z_att, attacker.private_labels, z_big, big.private_labels),
                (attacker.task_labels, attacker.private_labels),
                z_hold,
                holdout.private_labels,
                holdout.task_labels,
                name=data.private,
                classes=tuple(data.classes[data.private]),
                num_task_classes=data.num_classes(data.task),
                spec=spec,
                progress=progress,
                device=device,
            )

        attribute = attack(f_att, f_big, f_hold)
        if spec.null:
            attribute = _with_null(attribute, attack, f_big, f_hold, len(f_att), seed=spec.seed)
    reconstruction = None
    if spec.reconstruction:  # the decoder learns from the largest training set
        reconstruction = attack_reconstruction(
            f_big, big.images, f_hold, holdout.images, spec=spec, progress=progress, device=device
        )
    return FeatureLeakageResult(
        source=data.source,
        task=data.task,
        image_shape=tuple(int(v) for v in data.images.shape[1:]),
        feature_shape=tuple(int(v) for v in f_att.shape[1:]),
        feature_dtype=dtype,
        attacker_size=len(attacker_idx),
        holdout_size=len(holdout_idx),
        spec=spec,
        attribute=attribute,
        reconstruction=reconstruction,
        runtime_s=time.perf_counter() - started,
        device=str(device),
    )


def probe_run_features(
    run,
    spec: FeatureProbeSpec = FeatureProbeSpec(),
    *,
    progress: bool = True,
    device: torch.device | str | None = None,
    frames: Frames = Frames(),
) -> FeatureLeakageResult:
    """The probe on a run folder's torch model, as deployed (channel noise on), with its task accuracy.

    ``frames``: the attackers see the mean of that many noisy draws of each image (a streamed scene), or the
    noise-free features (the limit); such a result goes to ``RUN/probe_features.framesK.json`` (or
    ``.noisefree.json``) beside the one-frame result.

    The model encodes and the attackers train on ``device`` (default the CPU, the reference).

    Saves ``RUN/probe_features.json`` (+ samples npz) and returns the result. The accuracy and the
    probe's features use separate noise streams (``spec.seed`` and ``spec.seed + 1``), as two
    transmissions would draw.
    """
    from privsplit.run import RunFolder

    folder = run if isinstance(run, RunFolder) else RunFolder(run).check()
    device = use_device(device)
    model = folder.load_split_model().to(device)
    data = folder.dataset()
    split = folder.split()
    noise_seed = folder.eval_noise_seed()  # the run's holdout noise: the same accuracy as train and export print
    if progress:
        print(
            f"privsplit probe features: {folder.path} ({data.source}, task {data.task}, private {data.private}, "
            f"noise sigma {model.config.noise_sigma:g}); attacker {len(split[Part.ATTACKER])}, "
            f"holdout {len(split[Part.HOLDOUT])}",
            file=sys.stderr,
            flush=True,
        )
    accuracy = torch_task_accuracy(model, data.subset(split[Part.HOLDOUT]), seed=noise_seed)
    encode = averaged_encoder(torch_encoder_fn(model, seed=spec.seed + 1, noise=not frames.noise_free), frames)
    result = probe_features(encode, data, split, spec=spec, progress=progress, device=device).with_task_accuracy(
        accuracy, noise_sigma=float(model.config.noise_sigma), noise_seed=noise_seed
    )
    if frames.tag:
        result = replace(result, features_from=f"{result.features_from}{frames.described}")
        result.save(folder.file(f"probe_features{frames.tag}.json"))
    else:
        result.save(folder.path)
    return result
