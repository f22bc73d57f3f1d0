"""The fixed, seeded split of a dataset into members / reference / holdout / attacker."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from privsplit.errors import ConfigError
from privsplit.results import check_schema, from_dict, read_json, save_json, to_dict

SPLIT_SCHEMA_VERSION = 1
_HINT = "is this a run folder written by `privsplit train`?"


class Part(str, Enum):
    """The four disjoint parts of every run's data."""

    MEMBERS = "members"  # the classifier's training set
    REFERENCE = "reference"  # never trained on by the classifier; the purifier's training set
    HOLDOUT = "holdout"  # never trained on by anything; where every figure is measured
    ATTACKER = "attacker"  # auxiliary data the post-hoc attackers train on


@dataclass(frozen=True)
class SplitFractions:
    members: float = 0.4
    reference: float = 0.2
    holdout: float = 0.2
    attacker: float = 0.2

    def __post_init__(self) -> None:
        values = self.as_dict()
        if any(v < 0 for v in values.values()) or sum(values.values()) > 1.0 + 1e-9:
            raise ConfigError(
                f"split fractions must be >= 0 and sum to at most 1, got {values}; "
                "e.g. --split 0.4,0.2,0.2,0.2 (members,reference,holdout,attacker)"
            )
        if self.members <= 0 or self.holdout <= 0:
            raise ConfigError("--split needs members > 0 and holdout > 0")

    def as_dict(self) -> dict[str, float]:
        return {p.value: getattr(self, p.value) for p in Part}

    @classmethod
    def parse(cls, text: str) -> SplitFractions:
        """Parse ``"0.4,0.2,0.2,0.2"`` (members, reference, holdout, attacker)."""
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != 4:
            raise ConfigError(
                f"--split {text!r} is not four comma-separated fractions "
                "(members,reference,holdout,attacker), e.g. 0.4,0.2,0.2,0.2"
            )
        return cls(*values)


@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint index arrays into a dataset of ``n`` items."""

    n: int
    seed: int
    fractions: SplitFractions
    indices: dict[Part, np.ndarray]

    def __getitem__(self, part: Part | str) -> np.ndarray:
        return self.indices[Part(part)]

    def sizes(self) -> dict[str, int]:
        return {p.value: int(len(self.indices[p])) for p in Part}

    def to_json(self) -> dict:
        return {"schema_version": SPLIT_SCHEMA_VERSION, **to_dict(self)}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "split.json") -> Split:
        data = check_schema(data, version=SPLIT_SCHEMA_VERSION, source=source, hint=_HINT)
        indices = {p: np.asarray(data["indices"][p.value], dtype=np.int64) for p in Part}
        return from_dict(cls, {**data, "indices": indices})

    def save(self, path: Path) -> None:
        save_json(path, self.to_json(), indent=None)

    @classmethod
    def load(cls, path: Path) -> Split:
        return cls.from_json(read_json(path, what="the split", hint=_HINT), source=str(path))


def make_split(n: int, fractions: SplitFractions = SplitFractions(), *, seed: int = 0) -> Split:
    """Shuffle ``range(n)`` with ``seed`` and cut it into the four parts in order."""
    if n < 4:
        raise ConfigError(f"need at least 4 items to split, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    indices: dict[Part, np.ndarray] = {}
    start = 0
    for part in Part:
        count = int(round(getattr(fractions, part.value) * n))
        count = min(count, n - start)
        indices[part] = np.sort(order[start : start + count]).astype(np.int64)
        start += count
    for part in (Part.MEMBERS, Part.HOLDOUT):
        if len(indices[part]) == 0:
            raise ConfigError(f"the split leaves no {part.value} out of {n} items: use more data or larger fractions")
    return Split(n=n, seed=seed, fractions=fractions, indices=indices)
