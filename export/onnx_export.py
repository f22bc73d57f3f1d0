"""Torch -> ONNX (``torch.onnx.export(dynamo=True)``, weights inside the file) and static int8 QDQ.

Encoders: NHWC float32 input in [0, 1] named ``image``, NHWC output named ``features``, dynamic batch.
Cloud: ``server.onnx`` (``features`` [B, C, h, w] -> ``probs`` [B, K], softmax included) and
``purifier.onnx`` (``probs`` -> ``purified``), dynamic batch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

from privsplit.errors import require
from privsplit.export.calibration import CalibrationSet, onnx_reader

OPSET = 18
ENCODER_INPUT, ENCODER_OUTPUT = "image", "features"
SERVER_INPUT, SERVER_OUTPUT = "features", "probs"
PURIFIER_INPUT, PURIFIER_OUTPUT = "probs", "purified"


def export_module(module, sample, out: Path, *, input_name: str, output_name: str) -> Path:
    """Export ``module(sample)`` to ``out`` with a dynamic batch dimension; quiet unless it fails."""
    import torch

    require("onnxscript", package="onnxscript", extra="export")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                (sample,),
                str(out),
                dynamo=True,
                external_data=False,
                opset_version=OPSET,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
    except Exception as exc:
        raise RuntimeError(f"torch.onnx.export failed: {exc}\n{log.getvalue()[-2000:]}") from exc
    finally:
        registration.setLevel(level)
    return out


def export_encoder(encoder_nhwc, image_shape: tuple[int, int, int], out: Path) -> Path:
    import torch

    h, w, c = image_shape
    return export_module(
        encoder_nhwc, torch.rand(2, h, w, c), out, input_name=ENCODER_INPUT, output_name=ENCODER_OUTPUT
    )


def quantize_int8(float_path: Path, out: Path, *, calib: CalibrationSet, progress: bool = True) -> Path:
    """Static int8: QDQ, per-channel int8 weights, uint8 activations (faster than int8 ones on x86).

    ``reduce_range``: 7-bit weights (-64..64). onnxruntime fuses DQ -> Conv -> Q into QLinearConv, whose u8s8 kernel on
    x86 without VNNI (AVX2, AVX-512F) adds pairs of u8 x s8 products in int16 (VPMADDUBSW), which saturates when
    255 * (|w1| + |w2|) > 32767. With full-range weights (-127..127) the digits encoder lost 11-16 accuracy points
    there (cosine 0.74; the same file unfused: 0.9997); 7-bit weights cannot saturate (255 * 128 < 32767).
    """
    quant = require("onnxruntime.quantization", package="onnxruntime", extra="export")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))
        quant.quantize_static(
            str(prepared),
            str(out),
            onnx_reader(calib, ENCODER_INPUT, progress=progress),
            quant_format=quant.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quant.QuantType.QUInt8,
            weight_type=quant.QuantType.QInt8,
            calibrate_method=quant.CalibrationMethod.MinMax,
            reduce_range=True,
        )
    return out


def export_server(server, feature_shape: tuple[int, int, int], out: Path) -> Path:
    import torch

    return export_module(
        server, torch.randn(2, *feature_shape), out, input_name=SERVER_INPUT, output_name=SERVER_OUTPUT
    )


def export_purifier(purifier, num_classes: int, out: Path) -> Path:
    import torch

    sample = torch.softmax(torch.randn(2, num_classes), dim=1)
    return export_module(purifier, sample, out, input_name=PURIFIER_INPUT, output_name=PURIFIER_OUTPUT)
