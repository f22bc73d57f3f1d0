"""Typed results of the feature-leakage probe: versioned JSON plus an npz of reconstruction samples.

No torch here: results can be loaded, summarised and plotted anywhere numpy runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from privsplit.errors import ResultError, RunError
from privsplit.probes.feature_spec import FeatureProbeSpec
from privsplit.results import check_schema, from_dict, read_json, save_json, save_npz, to_dict

FEATURE_LEAKAGE_SCHEMA_VERSION = 2  # 2: learning curve (attacker x training set), intervals; 1 still loads
_READABLE_VERSIONS = (1, 2)
KIND = "feature_leakage"
_HINT = "re-run `privsplit probe features`"
DEFAULT_NAME = "probe_features"


@dataclass(frozen=True)
class AttackerScore:
    """One attribute attacker scored on holdout. ``selection`` says what was chosen on its training data.

    ``attacker`` (the family) and ``train_set`` (which learning-curve set it was trained on, of
    ``train_size`` images) are None in results of schema 1 (one attacker each, trained on ``attacker``).
    ``ci_low``/``ci_high``: 95% binomial interval of the balanced accuracy (normal approximation of
    each class's recall on holdout).
    """

    balanced_accuracy: float
    auc: float | None
    validation_balanced_accuracy: float | None = None
    selection: str = ""
    attacker: str | None = None
    train_set: str | None = None
    train_size: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttackerScore:
        return from_dict(cls, data)


@dataclass(frozen=True, eq=True)
class AttributeLeakage:
    """Attribute inference from the features, with its two yardsticks beside it.

    ``chance`` is the balanced accuracy of guessing (1/K); ``task_floor`` is the balanced accuracy an
    attacker reaches from the true task label alone (the server learns the task anyway), so leakage
    *beyond the task* is the best attacker's margin over ``task_floor``. ``null_balanced_accuracy`` (None unless
    the probe ran with ``null``) is the best of the same attackers on features that carry nothing, scored on the
    same holdout (``null_best`` names it): what the best-of-all headline reads by chance on this holdout.
    ``permutation_null_mean`` / ``permutation_null_q95`` (None in files written before): the mean and 95th
    percentile of the best of the same attackers' holdout balanced accuracies when the holdout's private labels
    are permuted (2,000 draws; :func:`~privsplit.probes.attribute_attack.best_balanced_accuracy_null`): the
    headline's chance level, computed by every probe at no training cost.
    """

    name: str
    classes: tuple[str, ...]
    attackers: Mapping[str, AttackerScore]
    chance: float
    task_floor: float
    task_floor_auc: float | None
    task_floor_ci: tuple[float, float] | None = None  # 95% binomial interval of the floor's balanced accuracy
    null_balanced_accuracy: float | None = None
    null_best: str | None = None
    permutation_null_mean: float | None = None
    permutation_null_q95: float | None = None

    def __post_init__(self) -> None:
        if not self.attackers:
            raise ValueError("AttributeLeakage needs at least one attacker score")

    @property
    def best(self) -> str:
        """The attacker (over every family and learning-curve set) with the highest holdout balanced accuracy."""
        return max(self.attackers, key=lambda k: self.attackers[k].balanced_accuracy)

    @property
    def best_score(self) -> AttackerScore:
        return self.attackers[self.best]

    def curve(self) -> dict[str, dict[str, AttackerScore]]:
        """``{attacker family: {training set: score}}`` in training-set order (schema 1: each on ``attacker``)."""
        out: dict[str, dict[str, AttackerScore]] = {}
        for key, score in self.attackers.items():
            out.setdefault(score.attacker or key, {})[score.train_set or "attacker"] = score
        return out

    @property
    def balanced_accuracy(self) -> float:
        return self.attackers[self.best].balanced_accuracy

    @property
    def auc(self) -> float | None:
        return self.attackers[self.best].auc

    def to_json(self) -> dict:
        return to_dict(
            {
                "name": self.name,
                "classes": self.classes,
                "best": self.best,
                "balanced_accuracy": self.balanced_accuracy,
                "auc": self.auc,
                "chance": self.chance,
                "chance_auc": 0.5,
                "task_floor": self.task_floor,
                "task_floor_auc": self.task_floor_auc,
                "task_floor_ci": self.task_floor_ci,
                "best_ci": [self.best_score.ci_low, self.best_score.ci_high],
                "null_balanced_accuracy": self.null_balanced_accuracy,
                "null_best": self.null_best,
                "permutation_null_mean": self.permutation_null_mean,
                "permutation_null_q95": self.permutation_null_q95,
                "attackers": self.attackers,
            }
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttributeLeakage:
        return from_dict(cls, data)


@dataclass(frozen=True, eq=False)
class ReconstructionSamples:
    """A few holdout images and their reconstructions, ``uint8 (n, H, W, C)``, plus the mean image."""

    originals: np.ndarray
    reconstructions: np.ndarray
    mean_image: np.ndarray

    def save(self, path: Path) -> None:
        save_npz(path, {k: getattr(self, k) for k in ("originals", "reconstructions", "mean_image")})

    @classmethod
    def load(cls, path: Path) -> ReconstructionSamples:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["originals"], z["reconstructions"], z["mean_image"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReconstructionSamples) and all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in ("originals", "reconstructions", "mean_image")
        )


@dataclass(frozen=True)
class ReconstructionLeakage:
    """A decoder's reconstructions of holdout images beside the mean-image baseline.

    SSIM and PSNR are per-image means (PSNR in dB, pixels in [0, 1]); MSE is over all pixels.
    """

    ssim: float
    psnr: float
    mse: float
    baseline_ssim: float
    baseline_psnr: float
    baseline_mse: float
    best_epoch: int
    epochs: int
    samples: ReconstructionSamples | None = field(default=None, compare=False)

    def to_json(self, samples_file: str | None = None) -> dict:
        return {**to_dict(replace(self, samples=None)), "samples": samples_file}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], samples: ReconstructionSamples | None = None) -> ReconstructionLeakage:
        return from_dict(cls, {**data, "samples": samples})


@dataclass(frozen=True)
class FeatureLeakageResult:
    """Everything the feature probe measured on one encoder."""

    source: str
    task: str
    image_shape: tuple[int, int, int]  # H, W, C
    feature_shape: tuple[int, int, int]  # C, h, w
    feature_dtype: str
    attacker_size: int
    holdout_size: int
    spec: FeatureProbeSpec
    attribute: AttributeLeakage | None
    reconstruction: ReconstructionLeakage | None
    runtime_s: float
    task_accuracy: float | None = None
    task_noise_sigma: float | None = None  # the channel noise the task accuracy was measured with
    task_noise_seed: int | None = None
    device: str | None = None  # where the attackers trained ("cpu", "cuda:0"); None in files written before
    # what produced the features: "torch" (the run's model, float, noise on) or "<format> <bundle>" (e.g. the
    # exported tflite-int8 encoder's int8 wire features with the device's noise, `--bundle`)
    features_from: str = "torch"

    def with_task_accuracy(
        self, accuracy: float | None, *, noise_sigma: float | None = None, noise_seed: int | None = None
    ) -> FeatureLeakageResult:
        return replace(self, task_accuracy=accuracy, task_noise_sigma=noise_sigma, task_noise_seed=noise_seed)

    # ---- JSON ---------------------------------------------------------------------------------
    def to_json(self, *, samples_file: str | None = None) -> dict:
        return to_dict(
            {
                "schema_version": FEATURE_LEAKAGE_SCHEMA_VERSION,
                "kind": KIND,
                "data": {
                    "source": self.source,
                    "image_shape": list(self.image_shape),
                    "feature_shape": list(self.feature_shape),
                    "feature_dtype": self.feature_dtype,
                    "features_from": self.features_from,
                },
                "sizes": {"attacker": self.attacker_size, "holdout": self.holdout_size},
                "task": {
                    "name": self.task,
                    "accuracy": self.task_accuracy,
                    "noise_sigma": self.task_noise_sigma,
                    "noise_seed": self.task_noise_seed,
                },
                "attribute": None if self.attribute is None else self.attribute.to_json(),
                "reconstruction": None if self.reconstruction is None else self.reconstruction.to_json(samples_file),
                "spec": self.spec.to_json(),
                "runtime_s": float(self.runtime_s),
                "device": self.device,
            }
        )

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        *,
        samples: ReconstructionSamples | None = None,
        source: str = "feature-leakage result",
    ) -> FeatureLeakageResult:
        found = data.get("schema_version") if isinstance(data, Mapping) else None
        if isinstance(data, Mapping) and data.get("kind") == KIND and found not in _READABLE_VERSIONS:
            readable = " or ".join(map(str, _READABLE_VERSIONS))
            raise ResultError(f"{source} has schema version {found!r}, expected {readable}: {_HINT}")
        version = found if found in _READABLE_VERSIONS else FEATURE_LEAKAGE_SCHEMA_VERSION
        data = check_schema(data, version=version, kind=KIND, source=source, hint=_HINT)
        d = data["data"]
        return cls(
            source=str(d["source"]),
            task=str(data["task"]["name"]),
            image_shape=tuple(int(v) for v in d["image_shape"]),
            feature_shape=tuple(int(v) for v in d["feature_shape"]),
            feature_dtype=str(d["feature_dtype"]),
            attacker_size=int(data["sizes"]["attacker"]),
            holdout_size=int(data["sizes"]["holdout"]),
            spec=FeatureProbeSpec.from_json(data["spec"]),
            attribute=None if data["attribute"] is None else AttributeLeakage.from_json(data["attribute"]),
            reconstruction=None
            if data["reconstruction"] is None
            else ReconstructionLeakage.from_json(data["reconstruction"], samples),
            runtime_s=float(data["runtime_s"]),
            task_accuracy=data["task"].get("accuracy"),
            task_noise_sigma=data["task"].get("noise_sigma"),
            task_noise_seed=data["task"].get("noise_seed"),
            device=data.get("device"),
            features_from=str(d.get("features_from", "torch")),
        )

    # ---- files --------------------------------------------------------------------------------
    def save(self, target: str | Path) -> Path:
        """Write JSON (+ an npz of reconstruction samples beside it); returns the JSON path.

        ``target`` is a folder when it is an existing directory or has no suffix (it then gets
        ``probe_features.json`` and ``probe_features.samples.npz``), else the JSON file itself
        (``X.json`` gets ``X.samples.npz`` beside it).
        """
        target = Path(target)
        is_dir = target.is_dir() or not target.suffix
        json_path = target / f"{DEFAULT_NAME}.json" if is_dir else target
        json_path.parent.mkdir(parents=True, exist_ok=True)
        samples_file = None
        rec = self.reconstruction
        if rec is not None and rec.samples is not None:
            npz = json_path.with_name(json_path.stem + ".samples.npz")
            rec.samples.save(npz)
            samples_file = npz.name
        return save_json(json_path, self.to_json(samples_file=samples_file))

    @classmethod
    def load(cls, path: str | Path) -> FeatureLeakageResult:
        """Read a result written by :meth:`save` (a ``.json`` file or the folder holding ``probe_features.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / f"{DEFAULT_NAME}.json"
        if not path.is_file():
            raise RunError(f"{path} not found: run `privsplit probe features RUN` first")
        data = read_json(path, what="a feature-leakage result", hint=_HINT)
        samples = None
        name = (data.get("reconstruction") or {}).get("samples") if isinstance(data, dict) else None
        if name and (path.parent / name).is_file():
            samples = ReconstructionSamples.load(path.parent / name)
        return cls.from_json(data, samples=samples, source=str(path))

    # ---- text ---------------------------------------------------------------------------------
    def summary(self) -> str:
        from privsplit.probes.feature_summary import summary_text

        return summary_text(self)
