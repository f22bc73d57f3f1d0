"""Repeated frames: what an operator reads from the mean of K noisy copies of one image.

The channel noise is drawn fresh for every request, so a camera that streams one scene hands the cloud K copies
whose mean carries the noise shrunk by ``sqrt(K)``. Every feature attacker can be run on that mean by wrapping the
encoder; ``frames=1`` is the encoder itself, and the noise-free features are the limit of averaging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from privsplit.errors import ConfigError

Encoder = Callable[[np.ndarray], np.ndarray]


def check_frames(frames: int) -> int:
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer) or frames < 1:
        raise ConfigError(f"frames must be a whole number of at least 1 (1 = one frame per image), got {frames!r}")
    return int(frames)


@dataclass(frozen=True)
class Frames:
    """What the attackers see of each image: the mean of ``count`` noisy draws, or (``noise_free``) the limit of
    averaging, the features without channel noise."""

    count: int = 1
    noise_free: bool = False

    def __post_init__(self) -> None:
        check_frames(self.count)
        if self.noise_free and self.count != 1:
            raise ConfigError("the noise-free limit averages nothing: give count 1 with noise_free")

    @classmethod
    def parse(cls, text: str) -> Frames:
        """``K`` (a whole number >= 1) or ``inf`` (the noise-free limit); anything else is a one-line error."""
        if text.strip().lower() in ("inf", "infinity", "noise-free"):
            return cls(noise_free=True)
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count < 1:
            raise ConfigError(
                f"--frames {text!r}: give a whole number K >= 1 (the mean of K noisy frames) or 'inf' (noise-free)"
            )
        return cls(count=count)

    @property
    def tag(self) -> str:
        """File-name tag: ``""`` for one frame, ``.framesK``, ``.noisefree``."""
        return ".noisefree" if self.noise_free else ("" if self.count == 1 else f".frames{self.count}")

    @property
    def described(self) -> str:
        if self.noise_free:
            return " (noise-free: the limit of averaging frames)"
        return "" if self.count == 1 else f" (mean of {self.count} noisy frames)"


def averaged_encoder(encode: Encoder, frames: int | Frames) -> Encoder:
    """``images -> mean of frames draws of encode(images)`` as float32; the encoder itself when ``frames`` is 1.

    Each draw calls ``encode`` again, so an encoder that adds fresh noise per call (the device's) is averaged over
    independent noise; an integer (wire) output is averaged as the numbers the operator receives.
    """
    frames = frames.count if isinstance(frames, Frames) else check_frames(frames)
    if frames == 1:
        return encode

    def mean_of_frames(images: np.ndarray) -> np.ndarray:
        total = np.asarray(encode(images), dtype=np.float64)
        for _ in range(frames - 1):
            total += np.asarray(encode(images), dtype=np.float64)
        return (total / frames).astype(np.float32)

    return mean_of_frames
