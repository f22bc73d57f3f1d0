"""Image decoding and resizing shared by the loaders (Pillow only, no torch)."""

from __future__ import annotations

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
