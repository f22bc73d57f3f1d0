"""Reference vectors for the on-device acceptance check: a few inputs and each encoder's expected wire features.

Export writes ``reference_vectors.npz`` into the edge bundle (so the manifest lists it and the signature
covers it) and describes it in the manifest under ``reference_vectors``::

    {"file": "reference_vectors.npz", "count": N, "encoders": [...], "noise": "none",
     "tolerance_steps": 0, "computed_on": "x86_64"}

The npz holds ``pixels`` (uint8 ``(N, size, size, C)``, holdout images as the device's preprocessing
receives them) and, per shipped encoder format ``F``, ``wire/F``: int8 ``(N, C, h, w)``, the wire features
without channel noise, computed here through the same interpreters a device uses (LiteRT for TFLite,
onnxruntime for ONNX). The device recomputes them (:mod:`privsplit.edge.acceptance`) and refuses a release
whose bits differ: the same signed file can give other INT8 values on another CPU (an XNNPACK kernel picked
for CPU features the reference machine lacks; see docs/guides/emulated-pi.md).
"""

from __future__ import annotations

import io
import platform
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from privsplit.bundle import FeatureSpec, PreprocessSpec
from privsplit.errors import ExportError
from privsplit.export.formats import ExportFormat
from privsplit.results import atomic_write

VECTORS_FILE = "reference_vectors.npz"
VECTORS_KEY = "reference_vectors"
DEFAULT_COUNT = 8


def expected_wire(art, pixels: np.ndarray, preprocess: PreprocessSpec, wire: FeatureSpec) -> np.ndarray:
    """What the device's pipeline sends for ``pixels`` without noise: int8 ``(N, C, h, w)``.

    Input: ``(pixel / 255 - mean) / std`` quantized with the encoder's input spec (a float input keeps
    float32); output: dequantized with the encoder's output spec, NHWC -> NCHW, quantized for the wire."""
    x = art.input.quantize(preprocess.apply(pixels))
    raw = art.runtime.run(x)
    z = art.output.dequantize(raw).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(wire.quantize(z))


def write_reference_vectors(
    edge_dir: Path,
    arts: Mapping[ExportFormat, object],
    images: np.ndarray,
    *,
    preprocess: PreprocessSpec,
    wire: FeatureSpec,
    count: int = DEFAULT_COUNT,
) -> dict:
    """Write ``edge_dir/reference_vectors.npz`` for the encoders in ``arts``; return the manifest entry."""
    pixels = np.ascontiguousarray(np.asarray(images[:count], dtype=np.uint8))
    if len(pixels) == 0:
        raise ExportError("no holdout images for the reference vectors")
    arrays = {"pixels": pixels}
    for fmt, art in arts.items():
        got = expected_wire(art, pixels, preprocess, wire)
        if got.shape != (len(pixels), *wire.shape):
            raise ExportError(f"{fmt.value}: reference wire features have shape {got.shape}, expected {wire.shape}")
        arrays[f"wire/{fmt.value}"] = got
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(Path(edge_dir) / VECTORS_FILE, buf.getvalue())
    return {
        "file": VECTORS_FILE,
        "count": int(len(pixels)),
        "encoders": sorted(fmt.value for fmt in arts),
        "noise": "none",
        "tolerance_steps": 0,
        "computed_on": platform.machine(),
    }
