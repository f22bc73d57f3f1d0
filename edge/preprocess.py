"""Decoding, resizing, normalising and input quantization, exactly as the edge manifest says.

The manifest's ``preprocess`` gives the size, channels and channel order, the ``resize`` rule
("centre-crop to square, bilinear", the rule training used), and ``x = (pixel / 255 - mean) / std``;
the chosen encoder's ``input`` spec gives the dtype and, for int8 input, the scale and zero point:
``q = clip(round(x / scale) + zero_point, -128, 127)``. Pillow and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from privsplit.bundle import PreprocessSpec, TensorSpec
from privsplit.errors import BundleError, DataError

RESIZE_RULE = "centre-crop to square, bilinear"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _square(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)) if (w, h) != (s, s) else img


EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera sets instead of rotating the pixels


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (phone photos are stored sideways with that tag);
    an image without the tag, or with orientation 1, is returned as is."""
    if img.getexif().get(EXIF_ORIENTATION, 1) in (0, 1):
        return img
    return ImageOps.exif_transpose(img)


@dataclass(frozen=True)
class Preprocessor:
    """``decode(path)`` / ``frames(array)`` -> uint8 NHWC at the model size; ``to_input`` -> encoder input."""

    spec: PreprocessSpec
    input: TensorSpec

    @classmethod
    def from_manifest(cls, manifest, input_spec: TensorSpec) -> Preprocessor:
        raw = manifest["preprocess"]
        rule = raw.get("resize", RESIZE_RULE)
        if rule != RESIZE_RULE:
            raise BundleError(
                f"preprocess.resize {rule!r} is unknown to this privsplit "
                f"(it applies {RESIZE_RULE!r}): upgrade privsplit"
            )
        spec = PreprocessSpec.from_json(raw)
        if spec.layout != "NHWC" or spec.channel_order not in ("RGB", "L"):
            raise BundleError(f"preprocess layout {spec.layout}/{spec.channel_order} is not supported (NHWC, RGB or L)")
        if (
            (spec.channel_order == "L") != (spec.channels == 1)
            or len(spec.mean) != spec.channels
            or len(spec.std) != spec.channels
        ):
            raise BundleError(
                f"preprocess: {spec.channels} channels, order {spec.channel_order}, "
                f"mean/std {spec.mean}/{spec.std} disagree"
            )
        want = (spec.size, spec.size, spec.channels)
        if tuple(input_spec.shape[1:]) != want:
            raise BundleError(
                f"the encoder input is {list(input_spec.shape)}, preprocess makes [N, {', '.join(map(str, want))}]"
            )
        return cls(spec=spec, input=input_spec)

    @property
    def mode(self) -> str:
        return "L" if self.spec.channel_order == "L" else "RGB"

    # ---- pixels ----------------------------------------------------------------------------------
    def _fit(self, img: Image.Image) -> np.ndarray:
        img = _square(img.convert(self.mode))
        if img.size != (self.spec.size, self.spec.size):
            img = img.resize((self.spec.size, self.spec.size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr

    def decode(self, path: str | Path) -> np.ndarray:
        """An image file -> ``uint8 (size, size, channels)``, upright as its EXIF orientation says; unreadable
        files raise :class:`DataError`."""
        path = Path(path)
        try:
            with Image.open(path) as img:
                return self._fit(upright(img))
        except FileNotFoundError:
            raise DataError(f"image file {path} not found") from None
        except IsADirectoryError:
            raise DataError(f"{path} is a folder, not an image file") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"cannot decode {path}: {type(exc).__name__}: {exc}") from None

    def decode_bytes(self, data: bytes, *, name: str = "<bytes>") -> np.ndarray:
        import io

        try:
            with Image.open(io.BytesIO(data)) as img:
                return self._fit(upright(img))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"cannot decode {name}: {type(exc).__name__}: {exc}") from None

    def frame(self, frame: np.ndarray, *, bgr: bool = False) -> np.ndarray:
        """One camera frame ``uint8 (H, W, 3)`` (RGB; ``bgr=True`` for OpenCV), ``(H, W, 1)`` or ``(H, W)``
        -> ``uint8 (size, size, channels)`` by the same crop/resize/colour rule as :meth:`decode`."""
        arr = np.asarray(frame)
        if arr.dtype != np.uint8:
            raise DataError(f"frames must be uint8 pixels, got {arr.dtype} (scale float images to 0..255 and cast)")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[2] == 3:
            if bgr:
                arr = arr[..., ::-1]
            s = self.spec
            if arr.shape[:2] == (s.size, s.size) and self.mode == "RGB":
                return np.ascontiguousarray(arr)
            img = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
        elif arr.ndim == 2:
            if arr.shape == (self.spec.size, self.spec.size) and self.mode == "L":
                return arr[..., None]
            img = Image.fromarray(np.ascontiguousarray(arr), mode="L")
        else:
            raise DataError(f"a frame must be (H, W), (H, W, 1) or (H, W, 3) uint8, got shape {arr.shape}")
        return self._fit(img)

    def frames(self, frames: np.ndarray, *, bgr: bool = False) -> np.ndarray:
        """``uint8 (N, H, W, C)`` frames -> ``uint8 (N, size, size, channels)`` (one frame: :meth:`frame`)."""
        arr = np.asarray(frames)
        if arr.ndim != 4:
            raise DataError(
                f"frames must be a uint8 batch (N, H, W, C), got shape {arr.shape}; pass one frame to frame()"
            )
        s = self.spec
        if arr.dtype == np.uint8 and arr.shape[1:] == (s.size, s.size, s.channels) and not bgr:
            return arr
        if not len(arr):
            return np.zeros((0, s.size, s.size, s.channels), np.uint8)
        return np.stack([self.frame(f, bgr=bgr) for f in arr])

    # ---- model input -------------------------------------------------------------------------------
    @property
    def _identity_int8(self) -> bool:
        """True when normalise+quantize is exactly ``pixel - 128`` (mean 0, std 1, scale 1/255, zero point -128)."""
        s, q = self.spec, self.input
        return (
            q.dtype == "int8"
            and q.scale is not None
            and q.zero_point == -128
            and abs(q.scale * 255.0 - 1.0) < 1e-6
            and all(m == 0.0 for m in s.mean)
            and all(v == 1.0 for v in s.std)
        )

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """``uint8 NHWC`` -> float32 ``(pixel / 255 - mean) / std``."""
        return self.spec.apply(pixels)

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        """``uint8 NHWC`` -> the encoder's input tensor (float32, or int8 quantized with the input's scale)."""
        pixels = np.asarray(pixels, dtype=np.uint8)
        if self._identity_int8:
            # round((p / 255) / (1 / 255)) - 128 == p - 128 for every uint8 p: flip the top bit, reinterpret
            return (pixels ^ np.uint8(0x80)).view(np.int8)
        return self.input.quantize(self.normalise(pixels))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name), by suffix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
