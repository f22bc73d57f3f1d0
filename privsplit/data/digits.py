"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

The embedded default: it ships inside scikit-learn, so nothing is downloaded. Besides the task label
``digit`` it offers a private attribute, ``slant``: the writer's handwriting slant (the shear of the
ink's second moments), split at the median *within each digit* so that it is balanced in every class
and the digit alone predicts nothing about it (task floor = chance). Slant is a trait of the writer,
not of the digit: the stand-in for "who wrote this" that an encoder should not pass on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privsplit.data.dataset import LabeledImages
from privsplit.data.images import resize_array
from privsplit.data.spec import register_loader
from privsplit.errors import require


@register_loader("digits", default_image_size=32, needs_path=False, help="scikit-learn's bundled digits")
def load_digits(path: Path | None, *, image_size: int, limit: int | None) -> LabeledImages:
    datasets = require("sklearn.datasets", package="scikit-learn", extra="train")
    bunch = datasets.load_digits()
    images = bunch.images  # (N, 8, 8) float in [0, 16]
    target = bunch.target
    if limit is not None:
        images, target = images[:limit], target[:limit]
    slant = _slant_above_class_median(images, target)
    u8 = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    return LabeledImages(
        images=resize_array(u8, image_size),
        labels={"digit": target.astype(np.int64), "slant": slant},
        classes={"digit": tuple(str(d) for d in range(10)), "slant": ("left", "right")},
        source="digits",
        default_task="digit",
    )


def slant(images: np.ndarray) -> np.ndarray:
    """Shear of each image's ink: mu11 / mu02 of its centred second moments (x right, y down).

    Positive when the strokes lean right as they go up (a forward slant)."""
    n, h, w = images.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    mass = images.reshape(n, -1).sum(axis=1) + 1e-9
    cx = (images * xs).reshape(n, -1).sum(axis=1) / mass
    cy = (images * ys).reshape(n, -1).sum(axis=1) / mass
    dx = xs[None] - cx[:, None, None]
    dy = ys[None] - cy[:, None, None]
    mu11 = (images * dx * dy).reshape(n, -1).sum(axis=1)
    mu02 = (images * dy * dy).reshape(n, -1).sum(axis=1) + 1e-9
    return -mu11 / mu02  # y grows downwards: a forward slant has negative mu11


def _slant_above_class_median(images: np.ndarray, target: np.ndarray) -> np.ndarray:
    values = slant(images.astype(np.float64))
    out = np.zeros(len(values), dtype=np.int64)
    for digit in np.unique(target):
        rows = target == digit
        out[rows] = values[rows] > np.median(values[rows])
    return out
