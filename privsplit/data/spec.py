"""Dataset specs (``digits``, ``celeba:<dir>``, ...) and the registry of loaders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from privsplit.data.dataset import Dataset, LabeledImages
from privsplit.errors import DataError


class Loader(Protocol):
    def __call__(self, path: Path | None, *, image_size: int, limit: int | None) -> LabeledImages: ...


@dataclass(frozen=True)
class LoaderInfo:
    name: str
    load: Loader
    default_image_size: int
    needs_path: bool
    default_path: str | None = None
    help: str = ""


_REGISTRY: dict[str, LoaderInfo] = {}


def register_loader(
    name: str, *, default_image_size: int, needs_path: bool, default_path: str | None = None, help: str = ""
) -> Callable[[Loader], Loader]:
    """Decorator: make a loader available as the spec ``name[:path]``."""

    def wrap(fn: Loader) -> Loader:
        _REGISTRY[name] = LoaderInfo(name, fn, default_image_size, needs_path, default_path, help)
        return fn

    return wrap


def loaders() -> dict[str, LoaderInfo]:
    _import_builtin_loaders()
    return dict(_REGISTRY)


def _import_builtin_loaders() -> None:
    from privsplit.data import celeba, digits, fashion_mnist, folder, utkface  # noqa: F401


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``kind[:path]`` spec."""

    kind: str
    path: Path | None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        registry = loaders()
        kind, _, rest = text.partition(":")
        kinds = ", ".join(f"{k}:<dir>" if v.needs_path else k for k, v in sorted(registry.items()))
        if kind not in registry:
            raise DataError(f"unknown dataset spec {text!r}; use one of: {kinds}")
        info = registry[kind]
        path = rest or info.default_path
        if info.needs_path and not path:
            raise DataError(f"dataset spec {text!r} needs a folder: {kind}:<dir>")
        if path is None:
            return cls(kind, None)
        p = Path(path).expanduser()
        if not p.exists():
            hint = f": {info.help}" if not rest and info.help else ""  # the default folder: say how to get it
            raise DataError(f"dataset folder {p} does not exist (from spec {text!r}){hint}")
        return cls(kind, p)


def load_dataset(
    spec: str | DataSpec,
    *,
    task: str | None = None,
    private: str | None = None,
    image_size: int | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load a dataset by spec and choose its task and private attribute.

    ``limit`` keeps only the first ``limit`` images (in the source's own order), so that every
    split is drawn from them. Raises :class:`DataError` with a message naming the problem.
    """
    if isinstance(spec, str):
        spec = DataSpec.parse(spec)
    info = loaders()[spec.kind]
    if limit is not None and limit < 4:
        raise DataError(f"--limit {limit} is too small: need at least 4 images")
    size = image_size or info.default_image_size
    if size < 8:
        raise DataError(f"--image-size {size} is too small: use at least 8")
    raw = info.load(spec.path, image_size=size, limit=limit)
    if len(raw) == 0:
        raise DataError(f"{spec} holds no images")
    return raw.select(task=task, private=private)


def default_image_size(spec: str | DataSpec) -> int:
    if isinstance(spec, str):
        spec = DataSpec.parse(spec)
    return loaders()[spec.kind].default_image_size
