"""Running the written artefacts (ai-edge-litert / onnxruntime), and checking their I/O after conversion.

Parity is measured on the files as written, through the interpreters a device or the cloud uses,
never on the torch modules they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privsplit.bundle import TensorSpec
from privsplit.errors import BundleError, ExportError, require
from privsplit.export.formats import Backend, ExportFormat


def _ort_spec(arg) -> TensorSpec:
    from privsplit.edge.runtimes import ort_spec

    return ort_spec(arg)


def ort_session(path: Path, *, threads: int = 1):
    ort = require("onnxruntime", package="onnxruntime", extra="export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass
class EncoderArtefact:
    """One written encoder, opened with the device's own runtime registry (:mod:`privsplit.edge.runtimes`):
    ``encode(unit NHWC float32) -> float32 features (N, C, h, w)``. TFLite encoders are batch 1, like the
    device, and are looped over the rows."""

    fmt: ExportFormat
    path: Path
    runtime: object  # privsplit.edge.runtimes.Runtime

    @property
    def input(self) -> TensorSpec:
        return self.runtime.io.input

    @property
    def output(self) -> TensorSpec:
        return self.runtime.io.output

    def encode(self, unit: np.ndarray) -> np.ndarray:
        unit = np.asarray(unit, dtype=np.float32)
        if len(unit) == 0:
            return np.zeros((0, *(self.output.shape[i] for i in (3, 1, 2))), np.float32)
        out = self.runtime.run(self.input.quantize(unit))
        return np.ascontiguousarray(self.output.dequantize(out).transpose(0, 3, 1, 2))


def open_encoder(path: Path, fmt: ExportFormat, *, threads: int = 1) -> EncoderArtefact:
    """Open a written encoder with onnxruntime or LiteRT (the interpreters the device and the cloud use)."""
    from privsplit.edge.runtimes import RuntimeName, open_runtime

    backend = RuntimeName.ONNXRUNTIME if fmt.backend is Backend.ONNX else RuntimeName.LITERT
    try:
        runtime = open_runtime(Path(path), artefact=backend.artefact, runtime=backend, threads=threads)
    except BundleError as exc:
        raise ExportError(f"the converter wrote an artefact its interpreter rejects: {exc}") from None
    return EncoderArtefact(fmt, Path(path), runtime)


def check_encoder_io(
    art: EncoderArtefact, *, image_shape: tuple[int, int, int], feature_shape: tuple[int, int, int]
) -> None:
    """Raise :class:`ExportError` unless the artefact's I/O dtypes and NHWC shapes are what the format promises."""
    fmt = art.fmt
    batch = -1 if fmt.dynamic_batch else 1
    c, h, w = feature_shape
    dtype = "int8" if fmt.int8_io else "float32"
    expected = {"input": (dtype, (batch, *image_shape)), "output": (dtype, (batch, h, w, c))}
    for role, spec in (("input", art.input), ("output", art.output)):
        want_dtype, want_shape = expected[role]
        if spec.dtype != want_dtype or tuple(spec.shape) != want_shape:
            raise ExportError(
                f"{art.path.name}: {role} is {spec.dtype} {list(spec.shape)}, {fmt.value} must have "
                f"{want_dtype} {list(want_shape)} (converter regression: check the toolchain pins)"
            )
        if fmt.int8_io and not spec.quantized:
            raise ExportError(f"{art.path.name}: int8 {role} carries no scale/zero point")
    if fmt.int8_io and (abs(art.input.scale - 1.0 / 255.0) > 1e-7 or art.input.zero_point != -128):
        raise ExportError(
            f"{art.path.name}: int8 input quantization is scale {art.input.scale}, zero point "
            f"{art.input.zero_point}; expected 1/255 and -128 (the pinned [0, 1] input range)"
        )


def check_onnx_io(path: Path, *, inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]]) -> None:
    """Float32 ONNX model with exactly these input/output names and shapes (-1 = dynamic)."""
    session = ort_session(path)
    for role, args, want in (("input", session.get_inputs(), inputs), ("output", session.get_outputs(), outputs)):
        got = {a.name: _ort_spec(a) for a in args}
        if set(got) != set(want):
            raise ExportError(f"{path.name}: {role} names {sorted(got)}, expected {sorted(want)}")
        for name, shape in want.items():
            if got[name].dtype != "float32" or tuple(got[name].shape) != tuple(shape):
                raise ExportError(
                    f"{path.name}: {role} {name} is {got[name].dtype} {list(got[name].shape)}, "
                    f"expected float32 {list(shape)}"
                )
