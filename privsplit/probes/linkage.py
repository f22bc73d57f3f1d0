"""Identity linkage: can the holder of the features tell that two requests show the same person?

Face features are a biometric template whatever the attribute attacker reads. The probe splits the *identities*
(never the images) in two disjoint halves: attackers fit what they learn on one half and are scored on the other,
so a person in the test half was never seen by any attacker. Two attackers:

* ``cosine``: training-free; features standardised with the training half's mean and spread, then cosine
  similarity (what a cloud operator can do with no labels at all);
* ``lda``: a learned metric; linear discriminant analysis over the training half's identities (shrinkage, so
  it holds with fewer images than dimensions), cosine in its space.

Three readings per attacker on the test half:

* **verification**: every same-person pair against ``negatives_per_positive`` random pairs of different people:
  ROC AUC and the true-positive rate at 1% and 0.1% false positives;
* **rank-1 identification**: one gallery image per test person (people with one image stay in the gallery as
  distractors), every other image of a person with two or more is a probe; the share of probes whose nearest
  gallery image is the same person, against chance ``1 / gallery size``;
* with ``null``: the same attackers fitted and scored on Gaussian noise of the features' shape and the same
  identities and pairs, whose best AUC is what the best-of-attackers headline reads by chance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from privsplit.errors import ConfigError, DataError

LINKAGE_ATTACKERS = ("cosine", "lda")
LINKAGE_SCHEMA_VERSION = 1
LINKAGE_KIND = "identity-linkage"
_NULL_SALT = 0x11AE  # the null's noise draws come from their own stream, apart from the pair sampling
_ROC_POINTS = 200


@dataclass(frozen=True)
class LinkageSpec:
    """How the linkage probe splits identities and samples pairs."""

    seed: int = 0
    negatives_per_positive: int = 3
    test_share: float = 0.5
    null: bool = True

    def __post_init__(self) -> None:
        if self.negatives_per_positive < 1:
            raise ConfigError(f"negatives_per_positive must be at least 1, got {self.negatives_per_positive}")
        if not 0.0 < self.test_share < 1.0:
            raise ConfigError(f"test_share must lie strictly between 0 and 1, got {self.test_share}")


@dataclass(frozen=True)
class LinkageScore:
    """One attacker's linkage readings on the test identities."""

    attacker: str
    auc: float
    tpr_at_fpr_1pct: float
    tpr_at_fpr_0_1pct: float
    rank1: float
    null_auc: float | None = None
    roc_fpr: tuple[float, ...] = field(default=(), repr=False)
    roc_tpr: tuple[float, ...] = field(default=(), repr=False)

    def to_json(self) -> dict:
        return {
            "attacker": self.attacker,
            "auc": self.auc,
            "tpr_at_fpr_1pct": self.tpr_at_fpr_1pct,
            "tpr_at_fpr_0_1pct": self.tpr_at_fpr_0_1pct,
            "rank1": self.rank1,
            "null_auc": self.null_auc,
            "roc": {"fpr": list(self.roc_fpr), "tpr": list(self.roc_tpr)},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinkageScore:
        roc = data.get("roc") or {}
        return cls(
            attacker=str(data["attacker"]),
            auc=float(data["auc"]),
            tpr_at_fpr_1pct=float(data["tpr_at_fpr_1pct"]),
            tpr_at_fpr_0_1pct=float(data["tpr_at_fpr_0_1pct"]),
            rank1=float(data["rank1"]),
            null_auc=None if data.get("null_auc") is None else float(data["null_auc"]),
            roc_fpr=tuple(float(v) for v in roc.get("fpr", ())),
            roc_tpr=tuple(float(v) for v in roc.get("tpr", ())),
        )


@dataclass(frozen=True)
class LinkageResult:
    """Every attacker's readings, the sizes they were read on, and the chance levels beside them."""

    scores: tuple[LinkageScore, ...]
    train_identities: int
    test_identities: int
    positive_pairs: int
    negative_pairs: int
    gallery: int
    probes: int
    frames: int = 1
    noise_free: bool = False
    frame_jitter: float = 0.0
    features_from: str = ""

    @property
    def best(self) -> LinkageScore:
        """The attacker with the highest verification AUC (the headline)."""
        return max(self.scores, key=lambda s: s.auc)

    @property
    def rank1_chance(self) -> float:
        return 1.0 / self.gallery if self.gallery else float("nan")

    @property
    def null_auc(self) -> float | None:
        """The best attacker's AUC on noise features: the headline's chance level on these pairs."""
        nulls = [s.null_auc for s in self.scores if s.null_auc is not None]
        return max(nulls) if nulls else None

    @property
    def auc_excess(self) -> float:
        """``best AUC - max(0.5, null)``: what the features add over reading nothing."""
        return self.best.auc - max(0.5, self.null_auc if self.null_auc is not None else 0.5)

    def to_json(self) -> dict:
        return {
            "scores": [s.to_json() for s in self.scores],
            "train_identities": self.train_identities,
            "test_identities": self.test_identities,
            "positive_pairs": self.positive_pairs,
            "negative_pairs": self.negative_pairs,
            "gallery": self.gallery,
            "probes": self.probes,
            "frames": self.frames,
            "noise_free": self.noise_free,
            "frame_jitter": self.frame_jitter,
            "features_from": self.features_from,
            "best_attacker": self.best.attacker,
            "best_auc": self.best.auc,
            "null_auc": self.null_auc,
            "rank1_chance": self.rank1_chance,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinkageResult:
        return cls(
            scores=tuple(LinkageScore.from_json(s) for s in data["scores"]),
            train_identities=int(data["train_identities"]),
            test_identities=int(data["test_identities"]),
            positive_pairs=int(data["positive_pairs"]),
            negative_pairs=int(data["negative_pairs"]),
            gallery=int(data["gallery"]),
            probes=int(data["probes"]),
            frames=int(data.get("frames", 1)),
            noise_free=bool(data.get("noise_free", False)),
            frame_jitter=float(data.get("frame_jitter", 0.0)),
            features_from=str(data.get("features_from", "")),
        )

    def save(self, path: str | Path) -> Path:
        from privsplit.results import save_json

        return save_json(path, self.to_json(), version=LINKAGE_SCHEMA_VERSION, kind=LINKAGE_KIND)

    @classmethod
    def load(cls, path: str | Path) -> LinkageResult:
        from privsplit.results import check_schema, read_json

        data = read_json(path, what="an identity-linkage result", hint="run `privsplit probe features RUN --identity`")
        return cls.from_json(check_schema(data, version=LINKAGE_SCHEMA_VERSION, kind=LINKAGE_KIND, source=str(path)))

    def summary(self) -> str:
        from privsplit.probes.frames import Frames

        frames = Frames(self.frames, self.noise_free, self.frame_jitter).described
        null = "" if self.null_auc is None else f"; null (same attackers on noise) {self.null_auc:.3f}"
        lines = [
            f"identity linkage on {self.test_identities} unseen people ({self.positive_pairs} same-person pairs, "
            f"{self.negative_pairs} different-person pairs; attackers fitted on {self.train_identities} others"
            f"{frames})",
            f"  best verification AUC {self.best.auc:.3f} ({self.best.attacker}), chance 0.500{null}",
        ]
        for s in self.scores:
            lines.append(
                f"  {s.attacker:<7} AUC {s.auc:.3f}  TPR@1%FPR {s.tpr_at_fpr_1pct:.3f}  "
                f"TPR@0.1%FPR {s.tpr_at_fpr_0_1pct:.3f}  rank-1 {s.rank1:.2%} (chance {self.rank1_chance:.2%})"
            )
        return "\n".join(lines)


# ---- splitting and pairs ---------------------------------------------------------------------------------------
def split_identities(identities: np.ndarray, spec: LinkageSpec) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) over images, with every identity wholly on one side."""
    identities = np.asarray(identities)
    people = np.unique(identities)
    if len(people) < 4:
        raise DataError(f"identity linkage needs at least 4 distinct identities, got {len(people)}")
    rng = np.random.default_rng(spec.seed)
    test_people = rng.choice(people, size=max(2, int(round(len(people) * spec.test_share))), replace=False)
    test = np.isin(identities, test_people)
    return ~test, test


def verification_pairs(identities: np.ndarray, spec: LinkageSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs (P, 2), same (P,))``: every same-person pair, and ``negatives_per_positive`` random others each."""
    identities = np.asarray(identities)
    order = np.argsort(identities, kind="stable")
    sorted_ids = identities[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    ends = np.r_[starts[1:], len(sorted_ids)]
    positives = [
        (order[a], order[b]) for s, e in zip(starts, ends) if e - s > 1 for a in range(s, e) for b in range(a + 1, e)
    ]
    if not positives:
        raise DataError("identity linkage needs people with at least 2 images on the test side; none has")
    rng = np.random.default_rng(spec.seed + 1)
    want = len(positives) * spec.negatives_per_positive
    negatives = np.empty((0, 2), dtype=np.int64)
    while len(negatives) < want:
        draw = rng.integers(0, len(identities), size=(2 * want, 2))
        draw = draw[identities[draw[:, 0]] != identities[draw[:, 1]]]
        negatives = np.concatenate([negatives, draw])
    pairs = np.concatenate([np.asarray(positives, dtype=np.int64), negatives[:want]])
    same = np.r_[np.ones(len(positives), dtype=bool), np.zeros(want, dtype=bool)]
    return pairs, same


def gallery_and_probes(identities: np.ndarray, spec: LinkageSpec) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the gallery (one image per person) and of the probes (every other image of a person)."""
    rng = np.random.default_rng(spec.seed + 2)
    identities = np.asarray(identities)
    shuffled = rng.permutation(len(identities))
    _, first = np.unique(identities[shuffled], return_index=True)
    gallery = np.sort(shuffled[first])
    probes = np.setdiff1d(np.arange(len(identities)), gallery)
    return gallery, probes


# ---- attackers -------------------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _standardiser(train: np.ndarray):
    mean = train.mean(0)
    std = train.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    return lambda x: (x - mean) / std


def _lda_projection(x: np.ndarray, ids: np.ndarray):
    """Fisher's discriminant over identities, weighted as the two-covariance model says.

    Fitted on the people with 2 or more images: one pooled within-person covariance (Ledoit-Wolf shrunk, so it holds
    with few images per person and more dimensions than people) and the between-person covariance of their means.
    Each discriminant direction's ratio ``lambda`` is corrected for the noise a mean of ``n`` images still carries
    (``lambda - 1/n``) and the direction weighted by ``sqrt(l / (1 + l))`` of that corrected ratio, so directions
    that only look discriminative by chance drop out. Returns ``x -> weighted projection``.
    """
    from scipy.linalg import eigh
    from sklearn.covariance import ledoit_wolf

    people, index, counts = np.unique(ids, return_inverse=True, return_counts=True)
    keep = counts[index] > 1
    if int((counts > 1).sum()) < 2:
        raise DataError("the LDA linkage attacker needs at least 2 training people with 2 or more images")
    x, index = x[keep], np.unique(index[keep], return_inverse=True)[1]
    counts = np.bincount(index)
    sums = np.zeros((len(counts), x.shape[1]))
    np.add.at(sums, index, x)
    means = sums / counts[:, None]
    within, _ = ledoit_wolf(x - means[index], assume_centered=True)
    centre = means.mean(0)
    between = np.cov(means, rowvar=False, bias=True).reshape(x.shape[1], x.shape[1])
    values, vectors = eigh(between, within + 1e-9 * np.trace(within) / len(within) * np.eye(len(within)))
    signal = np.clip(values - float(np.mean(1.0 / counts)), 0.0, None)
    order = np.argsort(signal)[::-1][: max(1, min(len(counts) - 1, x.shape[1]))]
    weights = np.sqrt(signal[order] / (1.0 + signal[order]))
    directions = vectors[:, order] * weights
    return lambda z: (z - centre) @ directions


def embed(attacker: str, train: np.ndarray, train_ids: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Unit-length embeddings of ``test`` for ``attacker``, fitted on ``train`` (and its identities) only."""
    standardise = _standardiser(train)
    if attacker == "cosine":
        return _unit(standardise(test))
    if attacker == "lda":
        return _unit(_lda_projection(standardise(train), np.asarray(train_ids))(standardise(test)))
    raise ConfigError(f"unknown linkage attacker {attacker!r}; choose from {', '.join(LINKAGE_ATTACKERS)}")


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def _thin(fpr: np.ndarray, tpr: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    grid = np.linspace(0.0, 1.0, _ROC_POINTS)
    return tuple(np.round(grid, 5).tolist()), tuple(np.round(np.interp(grid, fpr, tpr), 5).tolist())


def _read(z: np.ndarray, pairs: np.ndarray, same: np.ndarray, gallery: np.ndarray, probes: np.ndarray, ids):
    from sklearn.metrics import roc_auc_score, roc_curve

    similarity = np.einsum("ij,ij->i", z[pairs[:, 0]], z[pairs[:, 1]])
    auc = float(roc_auc_score(same, similarity))
    fpr, tpr, _ = roc_curve(same, similarity)
    nearest = gallery[np.argmax(z[probes] @ z[gallery].T, axis=1)]
    rank1 = float(np.mean(ids[nearest] == ids[probes])) if len(probes) else float("nan")
    return auc, fpr, tpr, rank1


def probe_linkage(
    features: np.ndarray,
    identities: np.ndarray,
    spec: LinkageSpec = LinkageSpec(),
    *,
    testable: np.ndarray | None = None,
    attackers=LINKAGE_ATTACKERS,
) -> LinkageResult:
    """Measure identity linkage of ``features`` (N, ...) whose rows show people ``identities`` (N,).

    ``testable`` (boolean, N) limits the test side to some rows (e.g. images the encoder never trained on); the
    attackers still fit on every row of the other half's people.
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    ids = np.asarray(identities)
    if len(ids) != len(x):
        raise DataError(f"{len(x)} feature rows but {len(ids)} identities")
    if not np.isfinite(x).all():
        raise DataError("the features hold NaN or infinite values; the linkage probe needs finite features")
    train, test = split_identities(ids, spec)
    if testable is not None:
        test = test & np.asarray(testable, dtype=bool)
    test_index = np.flatnonzero(test)
    test_ids = ids[test_index]
    pairs, same = verification_pairs(test_ids, spec)
    gallery, probes = gallery_and_probes(test_ids, spec)
    noise = np.random.default_rng(spec.seed ^ _NULL_SALT).standard_normal(x.shape) if spec.null else None
    scores = []
    for name in attackers:
        z = embed(name, x[train], ids[train], x[test_index])
        auc, fpr, tpr, rank1 = _read(z, pairs, same, gallery, probes, test_ids)
        null_auc = None
        if noise is not None:
            zn = embed(name, noise[train], ids[train], noise[test_index])
            null_auc = _read(zn, pairs, same, gallery, probes, test_ids)[0]
        roc_fpr, roc_tpr = _thin(fpr, tpr)
        scores.append(
            LinkageScore(
                attacker=name,
                auc=auc,
                tpr_at_fpr_1pct=_tpr_at(fpr, tpr, 0.01),
                tpr_at_fpr_0_1pct=_tpr_at(fpr, tpr, 0.001),
                rank1=rank1,
                null_auc=null_auc,
                roc_fpr=roc_fpr,
                roc_tpr=roc_tpr,
            )
        )
    return LinkageResult(
        scores=tuple(scores),
        train_identities=len(np.unique(ids[train])),
        test_identities=len(np.unique(test_ids)),
        positive_pairs=int(same.sum()),
        negative_pairs=int((~same).sum()),
        gallery=len(gallery),
        probes=len(probes),
    )


def probe_encoder_linkage(
    encode, data, split, spec: LinkageSpec = LinkageSpec(), *, frames=None, progress: bool = True
) -> LinkageResult:
    """Linkage of an encoder's features over a run's data: fitted on every image of half the people, scored on the
    other half's images outside ``members`` (never trained on). ``frames`` (:class:`Frames`) > 1 averages that many
    noisy draws; with ``noise_free`` the caller's encoder adds no noise and this records it."""
    from privsplit.data import Part
    from privsplit.probes.feature_probe import encode_images
    from privsplit.probes.frames import Frames, averaged_encoder

    frames = frames or Frames()

    if "identity" not in data.labels:
        raise DataError(
            f"--identity needs an identity label and {data.source} has none (CelebA has one when its folder holds "
            "identity_CelebA.txt); drop --identity for this dataset"
        )
    features = encode_images(averaged_encoder(encode, frames), data.images, desc="encode (linkage)", progress=progress)
    testable = np.ones(len(data), dtype=bool)
    testable[split[Part.MEMBERS]] = False
    result = probe_linkage(features, np.asarray(data.labels["identity"]), spec, testable=testable)
    return replace(result, frames=frames.count, noise_free=frames.noise_free, frame_jitter=frames.jitter)
