"""Running the written artefacts (ai-edge-litert / onnxruntime), and checking their I/O after conversion.

Parity is measured on the files as written, through the interpreters a device or the cloud uses,
never on the torch modules they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privsplit.bundle import TensorSpec
from privsplit.errors import ExportError, require
from privsplit.export.formats import Backend, ExportFormat


def _tflite_spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail["quantization"]
    dtype = np.dtype(detail["dtype"]).name
    quantized = dtype in ("int8", "uint8", "int16") and scale != 0.0
    return TensorSpec(dtype=dtype, shape=tuple(int(v) for v in detail["shape"]),
                      scale=float(scale) if quantized else None, zero_point=int(zero_point) if quantized else None)  # fmt: skip


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(float16)": "float16"}


def _ort_spec(arg) -> TensorSpec:
    shape = tuple(int(v) if isinstance(v, int) else -1 for v in arg.shape)
    return TensorSpec(dtype=_ORT_DTYPES.get(arg.type, arg.type), shape=shape)


def ort_session(path: Path, *, threads: int = 1):
    ort = require("onnxruntime", package="onnxruntime", extra="export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass
class EncoderArtefact:
    """One written encoder: ``encode(unit NHWC float32) -> float32 features (N, C, h, w)``."""

    fmt: ExportFormat
    path: Path
    input: TensorSpec
    output: TensorSpec
    _runner: object

    def encode(self, unit: np.ndarray) -> np.ndarray:
        unit = np.asarray(unit, dtype=np.float32)
        if self.fmt.backend is Backend.ONNX:
            out = self._runner.run(None, {self._runner.get_inputs()[0].name: self.input.quantize(unit)})[0]
        else:
            interp = self._runner
            in_index = interp.get_input_details()[0]["index"]
            out_index = interp.get_output_details()[0]["index"]
            rows = []
            for i in range(len(unit)):  # TFLite encoders are batch 1, like the device
                interp.set_tensor(in_index, self.input.quantize(unit[i : i + 1]))
                interp.invoke()
                rows.append(interp.get_tensor(out_index).copy())
            out = np.concatenate(rows) if rows else np.zeros((0, *self.output.shape[1:]), np.float32)
        return np.ascontiguousarray(self.output.dequantize(out).transpose(0, 3, 1, 2))


def open_encoder(path: Path, fmt: ExportFormat, *, threads: int = 1) -> EncoderArtefact:
    if fmt.backend is Backend.ONNX:
        session = ort_session(path, threads=threads)
        return EncoderArtefact(fmt, path, _ort_spec(session.get_inputs()[0]), _ort_spec(session.get_outputs()[0]), session)
    litert = require("ai_edge_litert.interpreter", package="ai-edge-litert==2.3.*", extra="edge")
    interp = litert.Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details(), interp.get_output_details()
    if len(inp) != 1 or len(out) != 1:
        raise ExportError(f"{path.name}: expected one input and one output, the converter wrote {len(inp)} and {len(out)}")
    return EncoderArtefact(fmt, path, _tflite_spec(inp[0]), _tflite_spec(out[0]), interp)


def check_encoder_io(art: EncoderArtefact, *, image_shape: tuple[int, int, int], feature_shape: tuple[int, int, int]) -> None:
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
                raise ExportError(f"{path.name}: {role} {name} is {got[name].dtype} {list(got[name].shape)}, expected float32 {list(shape)}")
