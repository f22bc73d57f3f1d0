"""How the device draws its channel noise: fresh for every request, or keyed on a device secret and the frame.

Fresh noise (``NoiseKeying.FRESH``) averages away: an operator who receives K copies of one frame (a camera
streaming a still scene, ``edge infer --stream``) averages them and the noise shrinks as ``sigma / sqrt(K)``.

Frame-keyed noise (``NoiseKeying.FRAME``) draws the noise from a generator seeded with
``HMAC-SHA256(device secret, frame pixels)``. The marginal is the same ``N(0, sigma^2)`` per value, so the task
and every single-query attacker see the same distribution as with fresh noise; but the same frame always gets
the same noise, so averaging exact repeats gains nothing. What it costs and leaks, measured
(``docs/guides/unforeseen-leakage.md``):

- repeats that differ in any pixel (sensor noise, motion) get independent noise, so averaging *those* still
  works; the keying protects exact repeats only;
- two sends of the very same frame are now bit-identical, so the operator can tell an exact repeat with
  certainty (with fresh noise it could already, with high probability);
- the secret never leaves the device; without it the operator cannot reproduce or subtract the noise.

Torch-free (numpy and the standard library): the edge imports it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from enum import Enum
from pathlib import Path

import numpy as np

from privsplit.errors import BundleError, ConfigError

KEY_BYTES = 32
NOISE_KEY_FILE = "noise.key"  # on a device: DEVICE/trust/noise.key (mode 0600), created on first use
USER_KEY_ENV = "PRIVSPLIT_NOISE_KEY"  # a key file for bundles that are not on a flashed device


class NoiseKeying(str, Enum):
    """How the device seeds its channel noise (the bundle manifest's ``features.noise_keying``)."""

    FRESH = "fresh"  # a new draw for every request; averages away over repeated frames
    FRAME = "frame"  # keyed on the device secret and the frame's pixels; exact repeats get the same noise

    @classmethod
    def parse(cls, value: str | NoiseKeying) -> NoiseKeying:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(
                f"noise keying {value!r} is not one of {', '.join(k.value for k in cls)}: "
                "fresh = a new draw per request, frame = keyed on the device secret and the frame"
            ) from None


def frame_keyed_normal(secret: bytes, frames: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal noise ``(N, *shape)`` float32, one draw per frame seeded by HMAC(secret, frame bytes).

    ``frames`` are the device's ``uint8 (N, H, W, C)`` pixels after decoding and resizing, the exact values
    the encoder reads; the shape joins the key so one frame keys different draws for different wire shapes.
    """
    if len(secret) < 16:
        raise ConfigError(f"the noise key has {len(secret)} bytes; it needs at least 16 (use {KEY_BYTES})")
    frames = np.ascontiguousarray(frames)
    tag = repr(tuple(int(s) for s in shape)).encode("ascii")
    out = np.empty((len(frames), *shape), np.float32)
    for i, frame in enumerate(frames):
        digest = hmac.new(secret, tag + frame.tobytes(), hashlib.sha256).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        out[i] = rng.standard_normal(shape, dtype=np.float32)
    return out


def read_or_create_key(path: Path) -> bytes:
    """The noise key at ``path``; created (32 random bytes, mode 0600) when absent."""
    path = Path(path)
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(KEY_BYTES))
        key = path.read_bytes()
    except FileExistsError:  # another process created it first
        key = path.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"cannot read or create the device noise key {path}: {exc.strerror or exc}; "
            f"make its folder writable or set {USER_KEY_ENV} to a key file"
        ) from None
    if len(key) < 16:
        raise BundleError(f"the device noise key {path} holds {len(key)} bytes; delete it to make a new one")
    return key


def device_noise_key(device: Path | None) -> bytes:
    """The secret a device keys its noise with: ``DEVICE/trust/noise.key`` on a flashed device, else the file
    named by ``PRIVSPLIT_NOISE_KEY``, else ``~/.config/privsplit/noise.key``; created on first use."""
    if device is not None:
        return read_or_create_key(Path(device) / "trust" / NOISE_KEY_FILE)
    named = os.environ.get(USER_KEY_ENV)
    if named:
        return read_or_create_key(Path(named))
    return read_or_create_key(Path.home() / ".config" / "privsplit" / NOISE_KEY_FILE)


def stand_in_key(seed: int) -> bytes:
    """A device secret for measurements (probes, export): the operator never holds the device's key, and any key
    it lacks reads the same, so a seeded stand-in keeps results reproducible without touching a real key file."""
    return hashlib.sha256(f"privsplit stand-in noise key {int(seed)}".encode()).digest()
