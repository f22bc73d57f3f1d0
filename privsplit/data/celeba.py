"""``celeba:<dir>``: CelebA in its official layout, every attribute a binary label.

The folder holds ``img_align_celeba/*.jpg``, ``list_attr_celeba.txt`` (line 1 the image count,
line 2 the 40 attribute names, then ``<file> 1/-1 ...`` per image) and optionally
``identity_CelebA.txt`` (``<file> <identity>``). Each attribute ``A`` becomes a label with classes
``("not_A", "A")``; the identity file adds an ``identity`` label (one class per person: not a usable
task on small subsets, where most people have only a handful of images).

Images are centre-cropped to a square and resized; decoded arrays are cached (see
:mod:`privsplit.data.cache`), so only the first load of a folder pays for JPEG decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privsplit.data.cache import cached_arrays, file_stamp
from privsplit.data.dataset import LabeledImages
from privsplit.data.images import read_images
from privsplit.data.spec import register_loader
from privsplit.errors import DataError

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
_CACHE_VERSION = 1


@dataclass(frozen=True, eq=False)
class CelebAAttributes:
    """The parsed attribute file: ``values[i, j]`` is 1 when image ``files[i]`` has ``names[j]``."""

    files: tuple[str, ...]
    names: tuple[str, ...]
    values: np.ndarray  # uint8 (N, len(names)) in {0, 1}


def read_attributes(path: Path, *, limit: int | None = None) -> CelebAAttributes:
    """Parse ``list_attr_celeba.txt``, keeping the first ``limit`` rows in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CelebA attribute file {path} not found (expected the official {ATTR_FILE})")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise DataError(f"{path}: expected the image count on line 1 and the attribute names on line 2")
    try:
        count = int(lines[0].split()[0])
    except ValueError:
        raise DataError(f"{path}: line 1 should be the number of images, got {lines[0][:40]!r}") from None
    names = tuple(lines[1].split())
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: line 2 should list distinct attribute names, got {lines[1][:80]!r}")
    rows = lines[2:]
    if len(rows) != count:
        raise DataError(f"{path}: line 1 announces {count} images but the file has {len(rows)} rows")
    if limit is not None:
        rows = rows[:limit]
    split = [row.split() for row in rows]
    for i, parts in enumerate(split):
        if len(parts) != len(names) + 1:
            raise DataError(
                f"{path}, line {i + 3}: expected a file name and {len(names)} values, got {len(parts)} fields"
            )
    files = [parts[0] for parts in split]
    try:
        flags = np.array([parts[1:] for parts in split], dtype=np.int64).reshape(len(split), len(names))
    except ValueError:
        raise DataError(f"{path}: attribute values must be 1 or -1") from None
    bad = np.flatnonzero(~np.isin(flags, (1, -1)).all(axis=1))
    if len(bad):
        raise DataError(f"{path}, line {bad[0] + 3}: attribute values must be 1 or -1")
    values = (flags == 1).astype(np.uint8)
    return CelebAAttributes(files=tuple(files), names=names, values=values)


def read_identities(path: Path, files: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Identity class index per file, and the class names (identity numbers, sorted numerically)."""
    ident: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{path}, line {n}: expected '<file> <identity>', got {line[:60]!r}")
        ident[parts[0]] = parts[1]
    missing = [f for f in files if f not in ident]
    if missing:
        raise DataError(f"{path} has no identity for {len(missing)} images, e.g. {missing[0]}")
    ids = [ident[f] for f in files]
    classes = tuple(sorted(set(ids), key=lambda s: (int(s), s) if s.isdigit() else (float("inf"), s)))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[s] for s in ids], dtype=np.int64), classes


@register_loader(
    "celeba", default_image_size=64, needs_path=True, help="CelebA folder: img_align_celeba/ + list_attr_celeba.txt"
)
def load_celeba(path: Path | None, *, image_size: int, limit: int | None) -> LabeledImages:
    if path is None or not Path(path).is_dir():
        raise DataError(f"CelebA folder {path} not found")
    root = Path(path)
    attr_path = root / ATTR_FILE
    attrs = read_attributes(attr_path, limit=limit)
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise DataError(f"CelebA image folder {image_dir} not found (expected {IMAGE_DIR}/ beside {ATTR_FILE})")
    present = {p.name for p in image_dir.iterdir()}
    missing = [f for f in attrs.files if f not in present]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(attrs.files)} images listed in {attr_path} are missing from {image_dir}, "
            f"e.g. {missing[0]}"
        )
    key = {
        "version": _CACHE_VERSION,
        "folder": str(root.resolve()),
        "attributes": file_stamp(attr_path),
        "image_dir_mtime_ns": image_dir.stat().st_mtime_ns,
        "image_size": image_size,
        "limit": limit,
    }
    files = np.array(attrs.files)

    def decode() -> dict[str, np.ndarray]:
        paths = [image_dir / f for f in attrs.files]
        return {"images": read_images(paths, size=image_size, desc="decoding CelebA"), "files": files}

    cached = cached_arrays("celeba", key, decode)
    if cached["files"].shape != files.shape or not np.array_equal(cached["files"], files):
        cached = decode()  # a stale or colliding cache entry: never trust it over the attribute file
    labels = {name: attrs.values[:, j].astype(np.int64) for j, name in enumerate(attrs.names)}
    classes = {name: (f"not_{name}", name) for name in attrs.names}
    identity_path = root / IDENTITY_FILE
    if identity_path.is_file():
        labels["identity"], classes["identity"] = read_identities(identity_path, attrs.files)
    return LabeledImages(
        images=cached["images"],
        labels=labels,
        classes=classes,
        source=f"celeba:{root}",
        default_task=None,
        ids=list(attrs.files),
    )
