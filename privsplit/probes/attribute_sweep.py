"""Every other attribute: what the features give away that training never named.

The protection is trained against one private attribute; a cloud operator may ask about any other (CelebA has 40).
For each attribute the sweep runs the feature probe's own attackers with that attribute as the private label
(the features are encoded once and shared), and reads the best attacker against its yardstick::

    excess = best balanced accuracy - max(chance, task floor, null)

where the task floor is what the task label alone says about the attribute and the null is the same attackers'
best on features that carry nothing (the best-of-N chance level on this holdout).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from privsplit.errors import ConfigError, DataError
from privsplit.probes.feature_spec import AttributeAttacker, FeatureProbeSpec

SWEEP_SCHEMA_VERSION = 1
SWEEP_KIND = "attribute-sweep"
_NOT_ATTRIBUTES = ("identity",)


def sweep_spec(*, seed: int = 0, epochs: int | None = None) -> FeatureProbeSpec:
    """The sweep's attackers: logistic regression and an MLP, each on the attacker part and on the pooled
    ``members + reference + attacker`` set, with the null; no reconstruction (it does not depend on the label)."""
    spec = FeatureProbeSpec(
        attackers=(AttributeAttacker.LOGISTIC, AttributeAttacker.MLP),
        curve=(1.0,),
        pooled=True,
        reconstruction=False,
        null=True,
        seed=seed,
    )
    return spec if epochs is None else spec.with_epochs(epochs)


@dataclass(frozen=True)
class AttributeExcess:
    """One attribute's best attacker beside its chance, task floor and null."""

    name: str
    balanced_accuracy: float
    attacker: str
    chance: float
    task_floor: float
    null: float | None
    ci_low: float
    ci_high: float

    @property
    def baseline(self) -> float:
        return max(self.chance, self.task_floor, self.null if self.null is not None else self.chance)

    @property
    def excess(self) -> float:
        return self.balanced_accuracy - self.baseline

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "balanced_accuracy": self.balanced_accuracy,
            "attacker": self.attacker,
            "chance": self.chance,
            "task_floor": self.task_floor,
            "null": self.null,
            "ci": [self.ci_low, self.ci_high],
            "excess": self.excess,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttributeExcess:
        return cls(
            name=str(data["name"]),
            balanced_accuracy=float(data["balanced_accuracy"]),
            attacker=str(data["attacker"]),
            chance=float(data["chance"]),
            task_floor=float(data["task_floor"]),
            null=None if data.get("null") is None else float(data["null"]),
            ci_low=float(data["ci"][0]),
            ci_high=float(data["ci"][1]),
        )


@dataclass(frozen=True)
class AttributeSweepResult:
    """Every swept attribute's excess, worst first in :meth:`summary`."""

    rows: tuple[AttributeExcess, ...]
    task: str
    features_from: str = ""
    frames: int = 1
    noise_free: bool = False
    frame_jitter: float = 0.0

    def row(self, name: str) -> AttributeExcess:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def worst(self) -> AttributeExcess:
        return max(self.rows, key=lambda r: r.excess)

    @property
    def median_excess(self) -> float:
        return float(np.median([r.excess for r in self.rows]))

    def over(self, threshold: float) -> tuple[AttributeExcess, ...]:
        return tuple(r for r in sorted(self.rows, key=lambda r: -r.excess) if r.excess > threshold)

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "features_from": self.features_from,
            "frames": self.frames,
            "noise_free": self.noise_free,
            "frame_jitter": self.frame_jitter,
            "rows": [r.to_json() for r in self.rows],
            "median_excess": self.median_excess,
            "worst": self.worst.name,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttributeSweepResult:
        return cls(
            rows=tuple(AttributeExcess.from_json(r) for r in data["rows"]),
            task=str(data["task"]),
            features_from=str(data.get("features_from", "")),
            frames=int(data.get("frames", 1)),
            noise_free=bool(data.get("noise_free", False)),
            frame_jitter=float(data.get("frame_jitter", 0.0)),
        )

    def save(self, path: str | Path) -> Path:
        from privsplit.results import save_json

        return save_json(path, self.to_json(), version=SWEEP_SCHEMA_VERSION, kind=SWEEP_KIND)

    @classmethod
    def load(cls, path: str | Path) -> AttributeSweepResult:
        from privsplit.results import check_schema, read_json

        data = read_json(path, what="an attribute sweep", hint="run `privsplit probe features RUN --attributes all`")
        return cls.from_json(check_schema(data, version=SWEEP_SCHEMA_VERSION, kind=SWEEP_KIND, source=str(path)))

    def summary(self) -> str:
        from privsplit.probes.frames import Frames

        frames = Frames(self.frames, self.noise_free, self.frame_jitter).described
        lines = [
            f"every other attribute ({len(self.rows)}; task {self.task}{frames}): excess = best - max(chance, "
            f"task floor, null); median {self.median_excess:+.3f}, over 0.05: {len(self.over(0.05))}, "
            f"over 0.10: {len(self.over(0.10))}",
            f"  {'attribute':<22} {'best':>6} {'floor':>6} {'null':>6} {'excess':>7}  attacker",
        ]
        for r in sorted(self.rows, key=lambda r: -r.excess):
            null = "  -   " if r.null is None else f"{r.null:6.3f}"
            lines.append(
                f"  {r.name:<22} {r.balanced_accuracy:6.3f} {r.task_floor:6.3f} {null} {r.excess:+7.3f}  {r.attacker}"
            )
        return "\n".join(lines)


def resolve_attributes(data, names: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` -> every two-class label but the task (and identity); else the named ones, checked."""
    candidates = [
        k for k, classes in data.classes.items() if k != data.task and k not in _NOT_ATTRIBUTES and len(classes) == 2
    ]
    if isinstance(names, str):
        names = candidates if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in candidates]
    if unknown:
        shown = ", ".join(candidates[:12]) + (", ..." if len(candidates) > 12 else "")
        raise ConfigError(
            f"--attributes: {', '.join(unknown)} is not a two-class label of {data.source} other than the task "
            f"{data.task!r}; choose from: {shown or '(none)'} or 'all'"
        )
    if not names:
        raise ConfigError(f"--attributes names no attribute; {data.source} offers: {', '.join(candidates) or 'none'}")
    return tuple(dict.fromkeys(names))


def _lookup_encoder(images: np.ndarray, features: np.ndarray):
    """An encoder that returns the precomputed features of each image (keyed by its bytes): one encoding shared by
    every attribute, the noise drawn once."""
    row = {hashlib.blake2b(img.tobytes(), digest_size=16).digest(): i for i, img in enumerate(images)}

    def encode(batch: np.ndarray) -> np.ndarray:
        try:
            return features[[row[hashlib.blake2b(img.tobytes(), digest_size=16).digest()] for img in batch]]
        except KeyError:
            raise DataError("the attribute sweep was asked to encode an image outside its dataset") from None

    return encode


def probe_attribute_sweep(
    encode,
    data,
    split,
    names: str | Sequence[str] = "all",
    *,
    spec: FeatureProbeSpec | None = None,
    frames=None,
    progress: bool = True,
    device=None,
) -> AttributeSweepResult:
    """Run the probe's attackers once per attribute on features encoded once (``frames`` noisy draws averaged)."""
    from privsplit.probes.feature_probe import encode_images, probe_features
    from privsplit.probes.frames import Frames, averaged_encoder
    from privsplit.progress import progress_bar

    frames = frames or Frames()
    attributes = resolve_attributes(data, names)
    spec = spec or sweep_spec()
    features = encode_images(
        averaged_encoder(encode, frames), data.images, desc="encode (attributes)", progress=progress
    )
    shared = _lookup_encoder(data.images, features)
    rows = []
    for name in progress_bar(attributes, desc="attributes", enabled=progress):
        leak = probe_features(shared, replace(data, private=name), split, spec=spec, progress=False, device=device)
        attribute = leak.attribute
        assert attribute is not None  # data.private is set
        best = attribute.best_score
        rows.append(
            AttributeExcess(
                name=name,
                balanced_accuracy=best.balanced_accuracy,
                attacker=attribute.best,
                chance=attribute.chance,
                task_floor=attribute.task_floor,
                null=attribute.null_balanced_accuracy,
                ci_low=best.ci_low,
                ci_high=best.ci_high,
            )
        )
    return AttributeSweepResult(
        rows=tuple(rows), task=data.task, frames=frames.count, noise_free=frames.noise_free, frame_jitter=frames.jitter
    )
