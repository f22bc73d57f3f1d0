"""Calibration data: real ``reference`` images of the run, fed to the int8 quantizers and the wire quantizer.

``reference`` is never trained on by the classifier and never used for the parity figures (those use
``holdout``), so calibrating on it leaks nothing into the measurement.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from privsplit.data import Dataset, Part, Split
from privsplit.errors import RunError


def _bar(items, *, desc: str, enabled: bool, total: int | None = None):
    from privsplit.progress import progress_bar

    return progress_bar(items, desc=desc, total=total, enabled=enabled)


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """``images``: uint8 NHWC reference images; ``indices`` into the run's dataset."""

    images: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def unit(self) -> np.ndarray:
        """The artefact input: float32 NHWC in [0, 1]."""
        return (self.images.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def calibration_set(data: Dataset, split: Split, *, count: int, seed: int = 0) -> CalibrationSet:
    """Up to ``count`` reference images, a seeded subsample when the part holds more."""
    index = split[Part.REFERENCE]
    if len(index) == 0:
        raise RunError(
            "the run's reference part is empty, so there is nothing to calibrate the int8 artefacts on: "
            "train with a reference share, e.g. --split 0.4,0.2,0.2,0.2"
        )
    if len(index) > count:
        index = np.sort(np.random.default_rng(seed).choice(index, size=count, replace=False))
    if len(index) < count:
        print(
            f"privsplit export: calibrating on all {len(index)} reference images (asked for {count})", file=sys.stderr
        )
    return CalibrationSet(images=data.images[index], indices=index)


def tflite_samples(calib: CalibrationSet, input_name: str) -> Iterator[dict[str, np.ndarray]]:
    """Batch-1 samples ``{input_name: (1, H, W, C) float32}`` for ai-edge-quantizer (which shows its own bar)."""
    unit = calib.unit
    for i in range(len(unit)):
        yield {input_name: unit[i : i + 1]}


def onnx_reader(calib: CalibrationSet, input_name: str, *, batch_size: int = 32, progress: bool = True):
    """An onnxruntime ``CalibrationDataReader`` over the calibration images."""
    from onnxruntime.quantization import CalibrationDataReader

    unit = calib.unit
    starts = list(range(0, len(unit), batch_size))

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._iter = iter(_bar(starts, desc="calibrate onnx-int8", enabled=progress))

        def get_next(self):
            start = next(self._iter, None)
            return None if start is None else {input_name: unit[start : start + batch_size]}

        def rewind(self) -> None:
            self._iter = iter(starts)

    return _Reader()


def wire_quantization(noisy_features: np.ndarray) -> tuple[float, int]:
    """Asymmetric int8 scale and zero point covering the min..max of (noisy) features, 0 included."""
    lo = min(0.0, float(np.min(noisy_features)))
    hi = max(0.0, float(np.max(noisy_features)))
    if hi - lo < 1e-12:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(np.rint(-128.0 - lo / scale), -128, 127))
    return float(scale), zero_point
