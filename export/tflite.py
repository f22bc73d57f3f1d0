"""Encoder -> TFLite: litert-torch for the float32 model, ai-edge-quantizer for fp16 / dynamic / full int8.

No TensorFlow is needed. The float32 model is converted once with NHWC I/O
(``litert_torch.to_channel_last_io``) at batch 1; every quantized format is made from that file, so
all TFLite artefacts share one graph. Full int8 uses the ``static_wi8_ai8`` recipe calibrated on real
reference images; its input range is pinned to the known domain [0, 1] (scale 1/255, zero point
-128), so a device feeds ``pixel - 128`` without rounding.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

from privsplit.errors import require
from privsplit.export.calibration import CalibrationSet, tflite_samples
from privsplit.export.formats import Backend, ExportFormat
from privsplit.quiet import drop_native_stderr


def _litert_torch():
    module = require("litert_torch", package="litert-torch==0.10.0", extra="export")
    module.config.show_progress = False
    return module


def _quantizer():
    return require("ai_edge_quantizer.quantizer", package="ai-edge-quantizer", extra="export")


def _recipe():
    return require("ai_edge_quantizer.recipe", package="ai-edge-quantizer", extra="export")


def convert_float(encoder, image_shape: tuple[int, int, int], out: Path) -> Path:
    """Convert the NCHW ``encoder`` (a :class:`NormalisedEncoder`) to float32 TFLite with NHWC I/O at batch 1."""
    import torch

    lt = _litert_torch()
    h, w, c = image_shape
    wrapped = lt.to_channel_last_io(encoder, args=[0], outputs=[0]).eval()
    sample = (torch.rand(1, h, w, c),)
    with warnings.catch_warnings(), drop_native_stderr():  # LiteRT's XNNPACK-delegate INFO line
        warnings.simplefilter("ignore")
        edge_model = lt.convert(wrapped, sample)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(edge_model.model_content()))
    return out


def _signature(float_path: Path) -> tuple[str, str, str]:
    """``(signature key, input name, input tensor name)`` of a converted single-input model."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(float_path))
    signatures = interp.get_signature_list()
    key = next(iter(signatures))
    input_name = signatures[key]["inputs"][0]
    runner = interp.get_signature_runner(key)
    tensor_name = runner.get_input_details()[input_name]["name"]
    return key, input_name, tensor_name


def _calibrate(float_path: Path, recipe, calibration, progress: bool = True) -> dict:
    """Activation ranges = min/max over the whole calibration set.

    ``Quantizer.calibrate`` keeps an exponential moving average (factor 0.95) of per-sample ranges,
    which at batch 1 tracks only the last ~20 images and clips rarer, larger activations (measured:
    max abs feature error 2.1 on unit-variance features); the calibrator with ``min_max_update`` does not.
    """
    cal_mod = require("ai_edge_quantizer.calibrator", package="ai-edge-quantizer", extra="export")
    qsv_utils = require("ai_edge_quantizer.utils.qsv_utils", package="ai-edge-quantizer", extra="export")
    manager = _recipe().recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    # the calibrator draws its own tqdm bar ("Running Calibration") on stderr; hide it when asked
    from privsplit.progress import bars_enabled

    quiet = contextlib.nullcontext() if bars_enabled(progress) else contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet:
        warnings.simplefilter("ignore")  # "experimental_preserve_all_tensors ... debugging purposes only"
        calib = cal_mod.Calibrator(float_path.read_bytes(), num_threads=1, qsv_update_func=qsv_utils.min_max_update)
        calib.calibrate(calibration, manager)
    return calib.get_model_qsvs()


def _quantize(
    float_path: Path, out: Path, recipe, calibration=None, pin_input: str | None = None, progress: bool = True
) -> Path:
    q = _quantizer().Quantizer(str(float_path), recipe)
    result = None
    if calibration is not None:
        result = _calibrate(float_path, recipe, calibration, progress)
        if pin_input is not None and pin_input in result:
            shape = np.asarray(result[pin_input]["min"]).shape
            result[pin_input] = {"min": np.zeros(shape, np.float32), "max": np.ones(shape, np.float32)}
    quantized = q.quantize(result, enable_progress_report=False)
    out.write_bytes(bytes(quantized.quantized_model))
    return out


def compact_names(path: Path) -> Path:
    """Rename internal tensors ``t<index>`` in place (the converter names each after its torch module
    path, ~300 bytes apiece: a third of a small int8 model). Graph I/O names and signatures stay."""
    fu = require("ai_edge_litert.tools.flatbuffer_utils", package="ai-edge-litert", extra="export")
    model = fu.read_model_from_bytearray(bytearray(path.read_bytes()))
    for subgraph in model.subgraphs:
        keep = set(subgraph.inputs) | set(subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = f"t{index}".encode()
    path.write_bytes(bytes(fu.convert_object_to_bytearray(model)))
    return path


def quantize_format(
    float_path: Path, fmt: ExportFormat, out: Path, *, calib: CalibrationSet | None, progress: bool = True
) -> Path:
    """Make ``fmt`` from the float32 TFLite file (``tflite-fp32`` is a copy), internal tensor names compacted."""
    # the quantizer's interpreters log LiteRT's XNNPACK-delegate INFO line natively
    with warnings.catch_warnings(), drop_native_stderr():
        warnings.simplefilter("ignore")
        return compact_names(_make(float_path, fmt, out, calib=calib, progress=progress))


def _make(float_path: Path, fmt: ExportFormat, out: Path, *, calib: CalibrationSet | None, progress: bool) -> Path:
    if fmt.backend is not Backend.TFLITE:
        raise ValueError(f"{fmt.value} is not a TFLite format")
    recipe = _recipe()
    if fmt is ExportFormat.TFLITE_FP32:
        out.write_bytes(float_path.read_bytes())
        return out
    if fmt is ExportFormat.TFLITE_FP16:
        # float16 weights, dequantized to float32 for compute (weight-only float casting)
        manager = recipe.recipe_manager.RecipeManager()
        manager.add_weight_only_config(
            regex=".*",
            operation_name=recipe.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=recipe.AlgorithmName.FLOAT_CASTING,
        )
        return _quantize(float_path, out, manager.get_quantization_recipe())
    if fmt is ExportFormat.TFLITE_DYNAMIC:
        return _quantize(float_path, out, recipe.dynamic_wi8_afp32())
    if fmt is ExportFormat.TFLITE_INT8:
        if calib is None:
            raise ValueError("tflite-int8 needs calibration images")
        key, input_name, tensor_name = _signature(float_path)
        data = {key: list(tflite_samples(calib, input_name))}
        return _quantize(
            float_path, out, recipe.static_wi8_ai8(), calibration=data, pin_input=tensor_name, progress=progress
        )
    raise ValueError(f"unhandled TFLite format {fmt.value}")  # pragma: no cover
