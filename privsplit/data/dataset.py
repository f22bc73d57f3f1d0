"""The in-memory dataset every loader returns: images plus named integer labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from privsplit.errors import DataError


@dataclass(frozen=True, eq=False)
class LabeledImages:
    """What a loader reads: all images and every label the source offers.

    ``images`` is ``uint8`` with shape ``(N, H, W, C)`` (C = 1 grey or 3 RGB, RGB order);
    ``labels[name]`` is an ``int64`` array of class indices into ``classes[name]``.
    """

    images: np.ndarray
    labels: Mapping[str, np.ndarray]
    classes: Mapping[str, tuple[str, ...]]
    source: str
    default_task: str | None = None
    ids: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(
                f"{self.source}: images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        n = len(self.images)
        for name, values in self.labels.items():
            if len(values) != n:
                raise DataError(f"{self.source}: label {name!r} has {len(values)} rows for {n} images")
            if name not in self.classes:
                raise DataError(f"{self.source}: label {name!r} has no class names")

    def __len__(self) -> int:
        return len(self.images)

    def select(self, *, task: str | None, private: str | None) -> Dataset:
        """Pick the task and private attribute by name; unknown names raise :class:`DataError`."""
        task = task or self.default_task
        available = ", ".join(sorted(self.labels))
        if task is None:
            raise DataError(f"{self.source} has several labels: choose one with --task ({available})")
        for role, name in (("task", task), ("private attribute", private)):
            if name is not None and name not in self.labels:
                raise DataError(f"unknown {role} {name!r} for {self.source}; available: {available}")
        if private is not None and private == task:
            raise DataError(f"the private attribute {private!r} cannot also be the task")
        return Dataset(
            images=self.images,
            labels=dict(self.labels),
            classes=dict(self.classes),
            source=self.source,
            task=task,
            private=private,
            ids=self.ids,
        )


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images with a chosen main task and (optionally) a private attribute."""

    images: np.ndarray
    labels: Mapping[str, np.ndarray]
    classes: Mapping[str, tuple[str, ...]]
    source: str
    task: str
    private: str | None = None
    ids: Sequence[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def task_labels(self) -> np.ndarray:
        return np.asarray(self.labels[self.task], dtype=np.int64)

    @property
    def private_labels(self) -> np.ndarray | None:
        if self.private is None:
            return None
        return np.asarray(self.labels[self.private], dtype=np.int64)

    def num_classes(self, name: str) -> int:
        return len(self.classes[name])

    def subset(self, index: np.ndarray) -> Dataset:
        index = np.asarray(index, dtype=np.int64)
        return Dataset(
            images=self.images[index],
            labels={k: np.asarray(v)[index] for k, v in self.labels.items()},
            classes=dict(self.classes),
            source=self.source,
            task=self.task,
            private=self.private,
            ids=None if self.ids is None else [self.ids[i] for i in index],
        )
