"""What every figure module shares: a headless pyplot, saving (folder made, figure closed), image cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, *, dpi: int = 110, tight: bool = True) -> Path:
    """Lay out (``tight``), write ``path`` (its folder made) and close ``fig``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def show_image(ax, image: np.ndarray) -> None:
    """One image cell without ticks: ``image`` is HWC uint8, or CHW float in [0, 1]."""
    if image.dtype != np.uint8:
        image = np.clip(np.transpose(image, (1, 2, 0)) * 255.0, 0, 255).astype(np.uint8)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
