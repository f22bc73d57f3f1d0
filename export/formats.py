"""The encoder artefact formats export can write, and what each one is."""

from __future__ import annotations

from enum import Enum

from privsplit.errors import ConfigError


class Backend(str, Enum):
    TFLITE = "tflite"
    ONNX = "onnx"


class ExportFormat(str, Enum):
    """One encoder artefact. Every format takes NHWC input in [0, 1] (pixel / 255) and returns NHWC features."""

    TFLITE_FP32 = "tflite-fp32"  # litert-torch, float32
    TFLITE_FP16 = "tflite-fp16"  # float16 weights (ai-edge-quantizer float casting), float32 compute and I/O
    TFLITE_DYNAMIC = "tflite-dynamic"  # int8 weights, activations quantized at run time, float32 I/O
    TFLITE_INT8 = "tflite-int8"  # full int8 (ai-edge-quantizer static_wi8_ai8): int8 input and output
    ONNX_FP32 = "onnx-fp32"  # torch.onnx dynamo export, float32
    ONNX_INT8 = "onnx-int8"  # onnxruntime static QDQ, per-channel int8 weights, uint8 activations, float32 I/O

    @property
    def backend(self) -> Backend:
        return Backend.TFLITE if self.value.startswith("tflite") else Backend.ONNX

    @property
    def filename(self) -> str:
        return f"encoder-{self.value}.{self.backend.value}"

    @property
    def needs_calibration(self) -> bool:
        return self in (ExportFormat.TFLITE_INT8, ExportFormat.ONNX_INT8)

    @property
    def int8_io(self) -> bool:
        """True when the artefact's input and output tensors are int8."""
        return self is ExportFormat.TFLITE_INT8

    @property
    def dynamic_batch(self) -> bool:
        """ONNX encoders take any batch; TFLite encoders are fixed at batch 1 (what a device runs)."""
        return self.backend is Backend.ONNX

    @property
    def float_reference(self) -> ExportFormat:
        """The float32 artefact of the same backend (for size ratios)."""
        return ExportFormat.TFLITE_FP32 if self.backend is Backend.TFLITE else ExportFormat.ONNX_FP32


ALL_FORMATS: tuple[ExportFormat, ...] = tuple(ExportFormat)

# Which shipped encoder the edge uses by default: the smallest, fastest on ARM first.
DEFAULT_PREFERENCE: tuple[ExportFormat, ...] = (
    ExportFormat.TFLITE_INT8,
    ExportFormat.TFLITE_DYNAMIC,
    ExportFormat.TFLITE_FP16,
    ExportFormat.TFLITE_FP32,
    ExportFormat.ONNX_INT8,
    ExportFormat.ONNX_FP32,
)


def parse_formats(text: str) -> tuple[ExportFormat, ...]:
    """``"tflite-int8,onnx-fp32"`` (or ``"all"``) -> formats in the canonical order, without duplicates."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return ALL_FORMATS
    chosen = set()
    for name in names:
        try:
            chosen.add(ExportFormat(name))
        except ValueError:
            raise ConfigError(
                f"unknown format {name!r}; choose from {', '.join(f.value for f in ExportFormat)} or 'all'"
            ) from None
    if not chosen:
        raise ConfigError("--formats is empty; e.g. --formats tflite-int8,onnx-fp32")
    return tuple(f for f in ALL_FORMATS if f in chosen)
