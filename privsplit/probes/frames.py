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
    jitter: float = 0.0  # sensor noise: each copy's pixels + N(0, jitter) grey levels, rounded and clipped

    def __post_init__(self) -> None:
        check_frames(self.count)
        if self.noise_free and self.count != 1:
            raise ConfigError("the noise-free limit averages nothing: give count 1 with noise_free")
        if not (np.isfinite(self.jitter) and 0 <= self.jitter <= 64):
            raise ConfigError(f"frame jitter is a pixel noise std in grey levels in [0, 64], got {self.jitter!r}")
        if self.jitter > 0 and self.count == 1:
            raise ConfigError("frame jitter perturbs repeated frames: give --frames K with K >= 2")

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
        if self.noise_free:
            return ".noisefree"
        if self.count == 1:
            return ""
        return f".frames{self.count}" + (f".jitter{self.jitter:g}" if self.jitter else "")

    @property
    def described(self) -> str:
        if self.noise_free:
            return " (noise-free: the limit of averaging frames)"
        if self.count == 1:
            return ""
        jitter = f", each with sensor noise of {self.jitter:g} grey levels" if self.jitter else ""
        return f" (mean of {self.count} noisy frames{jitter})"


def averaged_encoder(encode: Encoder, frames: int | Frames, *, seed: int = 0) -> Encoder:
    """``images -> mean of frames draws of encode(images)`` as float32; the encoder itself when ``frames`` is 1.

    Each draw calls ``encode`` again, so an encoder that adds fresh noise per call (the device's) is averaged over
    independent noise; an integer (wire) output is averaged as the numbers the operator receives. With
    ``jitter`` each copy is first perturbed like a camera's next frame of a still scene (pixel noise drawn from
    ``seed``), so an encoder whose noise is keyed on the exact frame sees ``count`` different frames.
    """
    frames = frames if isinstance(frames, Frames) else Frames(check_frames(frames))
    if frames.count == 1:
        return encode
    rng = np.random.default_rng(seed)

    def copy(images: np.ndarray) -> np.ndarray:
        if not frames.jitter:
            return images
        noisy = images.astype(np.float32) + np.float32(frames.jitter) * rng.standard_normal(images.shape, np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(images.dtype)

    def mean_of_frames(images: np.ndarray) -> np.ndarray:
        total = np.asarray(encode(copy(images)), dtype=np.float64)
        for _ in range(frames.count - 1):
            total += np.asarray(encode(copy(images)), dtype=np.float64)
        return (total / frames.count).astype(np.float32)

    return mean_of_frames
