"""Image decoding and resizing shared by the loaders (Pillow only, no torch)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from privsplit.errors import DataError


def to_square(img: Image.Image) -> Image.Image:
    """Centre-crop to the largest square."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def read_image(path: Path, *, size: int, channels: int = 3, crop_square: bool = True) -> np.ndarray:
    """Decode ``path`` to ``uint8 (size, size, channels)``; unreadable files raise :class:`DataError`."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            if crop_square:
                img = to_square(img)
            img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(f"image file {path} not found") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc.__class__.__name__}: {exc}") from exc
    return arr[..., None] if arr.ndim == 2 else arr


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``uint8 (N, H, W, C)`` images to ``size`` x ``size`` with bilinear filtering."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, im in enumerate(images):
        mode = "L" if im.shape[2] == 1 else "RGB"
        pil = Image.fromarray(im[..., 0] if mode == "L" else im, mode=mode)
        r = np.asarray(pil.resize((size, size), Image.BILINEAR), dtype=np.uint8)
        out[i] = r[..., None] if r.ndim == 2 else r
    return out


# --- many images: parallel decoding with progress -------------------------------------------

_PROGRESS_MIN = 500  # fewer images than this decode without a bar


def progress_bar(*, total: int, desc: str, unit: str = "img"):
    """A manual bar for decoding ``total`` images (see :mod:`privsplit.progress` for when it shows)."""
    from privsplit.progress import progress_bar as bar

    return bar(desc=desc, total=total, unit=unit, enabled=total >= _PROGRESS_MIN)


def read_images(
    paths: Sequence[Path], *, size: int, channels: int = 3, crop_square: bool = True, desc: str = "decoding images"
) -> np.ndarray:
    """Decode ``paths`` in order to ``uint8 (N, size, size, channels)`` with a small thread pool.

    Pillow releases the GIL while decoding, so a few threads overlap file reads and decoding.
    The first unreadable file raises :class:`DataError` naming it.
    """
    paths = list(paths)
    out = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    if not paths:
        return out
    chunks = [range(i, min(i + _CHUNK, len(paths))) for i in range(0, len(paths), _CHUNK)]

    def decode(chunk: range) -> int:
        for i in chunk:
            out[i] = read_image(paths[i], size=size, channels=channels, crop_square=crop_square)
        return len(chunk)

    workers = max(1, min(4, os.cpu_count() or 1, len(chunks)))
    with progress_bar(total=len(paths), desc=desc) as bar, ThreadPoolExecutor(workers) as pool:
        for done in pool.map(decode, chunks):
            bar.update(done)
    return out


_CHUNK = 64
