"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

The embedded default: it ships inside scikit-learn, so nothing is downloaded.
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
    u8 = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    return LabeledImages(
        images=resize_array(u8, image_size),
        labels={"digit": target.astype(np.int64)},
        classes={"digit": tuple(str(d) for d in range(10))},
        source="digits",
        default_task="digit",
    )
