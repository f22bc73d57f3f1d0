"""``fashion-mnist[:<dir>]``: Fashion-MNIST from its idx files (28x28 grey, 10 classes).

The folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte``, each plain or ``.gz``; train (60,000) and test (10,000) are
concatenated in that order. Without a folder, the Debian package ``dataset-fashion-mnist``'s
location is used (``apt-get install dataset-fashion-mnist``); nothing is downloaded.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from privsplit.data.dataset import LabeledImages
from privsplit.data.images import resize_array
from privsplit.data.spec import register_loader
from privsplit.errors import DataError

DEBIAN_PATH = "/usr/share/datasets/fashion-mnist"  # where dataset-fashion-mnist installs the idx files
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
PARTS = ("train", "t10k")
_IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (plain or gzip) of unsigned bytes, checking its magic number and dimensions."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"idx file {path} not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = raw[2], raw[3]
    if dtype != _IDX_UBYTE:
        raise DataError(f"{path}: idx data type 0x{dtype:02x} is not supported (expected unsigned bytes 0x08)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated idx header ({ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: idx dimensions {dims} need {expected} bytes of data, the file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_idx(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz``; a missing file raises :class:`DataError` naming both."""
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file {root / stem} (or {stem}.gz) not found")


def read_part(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = find_idx(root, f"{part}-images-idx3-ubyte")
    labels_path = find_idx(root, f"{part}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3 dimensions (N, rows, cols), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1 dimension (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"{labels_path}: label {labels.max()} is out of range 0-{len(CLASSES) - 1}")
    return images, labels


@register_loader(
    "fashion-mnist",
    default_image_size=28,
    needs_path=False,
    default_path=DEBIAN_PATH,
    help="Fashion-MNIST idx files; default folder from `apt-get install dataset-fashion-mnist`",
)
def load_fashion_mnist(path: Path | None, *, image_size: int, limit: int | None) -> LabeledImages:
    root = Path(path or DEBIAN_PATH)
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST folder {root} not found: apt-get install dataset-fashion-mnist")
    for part in PARTS:  # report a missing file before spending time on the others
        for kind in ("images-idx3", "labels-idx1"):
            find_idx(root, f"{part}-{kind}-ubyte")
    images, labels = [], []
    have = 0
    for part in PARTS:
        if limit is not None and have >= limit:
            break
        x, y = read_part(root, part)
        if images and x.shape[1:] != images[0].shape[1:]:
            raise DataError(f"{root}: {part} images are {x.shape[1:]}, train images {images[0].shape[1:]}")
        images.append(x)
        labels.append(y)
        have += len(x)
    x = np.concatenate(images)[:limit]
    y = np.concatenate(labels)[:limit]
    return LabeledImages(
        images=resize_array(np.ascontiguousarray(x)[..., None], image_size),
        labels={"class": y.astype(np.int64)},
        classes={"class": CLASSES},
        source=f"fashion-mnist:{root}",
        default_task="class",
    )
