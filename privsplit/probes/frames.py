"""Repeated frames: what an operator reads from the mean of K noisy copies of one image.

The channel noise is drawn fresh for every request, so a camera that streams one scene hands the cloud K copies
whose mean carries the noise shrunk by ``sqrt(K)``. Every feature attacker can be run on that mean by wrapping the
encoder; ``frames=1`` is the encoder itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from privsplit.errors import ConfigError

Encoder = Callable[[np.ndarray], np.ndarray]


def check_frames(frames: int) -> int:
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer) or frames < 1:
        raise ConfigError(f"frames must be a whole number of at least 1 (1 = one frame per image), got {frames!r}")
    return int(frames)


def averaged_encoder(encode: Encoder, frames: int) -> Encoder:
    """``images -> mean of frames draws of encode(images)`` as float32; the encoder itself when ``frames`` is 1.

    Each draw calls ``encode`` again, so an encoder that adds fresh noise per call (the device's) is averaged over
    independent noise; an integer (wire) output is averaged as the numbers the operator receives.
    """
    frames = check_frames(frames)
    if frames == 1:
        return encode

    def mean_of_frames(images: np.ndarray) -> np.ndarray:
        total = np.asarray(encode(images), dtype=np.float64)
        for _ in range(frames - 1):
            total += np.asarray(encode(images), dtype=np.float64)
        return (total / frames).astype(np.float32)

    return mean_of_frames
