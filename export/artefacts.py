"""Making every artefact of a run in a work folder: encoders per format, server layers and purifier."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from privsplit.errors import ExportError
from privsplit.export import onnx_export, tflite
from privsplit.export.calibration import CalibrationSet
from privsplit.export.formats import Backend, ExportFormat
from privsplit.export.modules import ChannelLastIO, edge_encoder, server_module
from privsplit.export.runtime import EncoderArtefact, check_encoder_io, check_onnx_io, open_encoder


class EncoderFactory:
    """Converts the run's encoder to each format on demand; the float file of each backend is made once."""

    def __init__(self, model, work: Path, *, calib: CalibrationSet, progress: bool = True) -> None:
        self.model = model
        self.work = work
        self.calib = calib
        self.progress = progress
        cfg = model.config
        self.image_shape = (cfg.image_size, cfg.image_size, cfg.in_channels)
        self._float: dict[Backend, Path] = {}

    def _float_file(self, backend: Backend) -> Path:
        if backend not in self._float:
            encoder = edge_encoder(self.model)
            if backend is Backend.TFLITE:
                path = tflite.convert_float(encoder, self.image_shape, self.work / "float.tflite")
            else:
                path = onnx_export.export_encoder(
                    ChannelLastIO(encoder).eval(), self.image_shape, self.work / "float.onnx"
                )
            self._float[backend] = path
        return self._float[backend]

    def make(self, fmt: ExportFormat) -> Path:
        out = self.work / fmt.filename
        float_path = self._float_file(fmt.backend)
        if fmt.backend is Backend.TFLITE:
            return tflite.quantize_format(float_path, fmt, out, calib=self.calib, progress=self.progress)
        if fmt is ExportFormat.ONNX_FP32:
            out.write_bytes(float_path.read_bytes())
            return out
        return onnx_export.quantize_int8(float_path, out, calib=self.calib, progress=self.progress)

    def open_checked(self, fmt: ExportFormat, path: Path, feature_shape: tuple[int, int, int]) -> EncoderArtefact:
        art = open_encoder(path, fmt)
        check_encoder_io(art, image_shape=self.image_shape, feature_shape=feature_shape)
        return art


def load_run_purifier(run):
    """The run's purifier module (eval mode) or None: when the purifier code or its files are absent."""
    if importlib.util.find_spec("privsplit.models.purifier") is None:
        return None
    module = importlib.import_module("privsplit.models.purifier")
    loader = getattr(module, "load_purifier", None)
    return None if loader is None else loader(run)


def make_cloud(model, run, folder: Path) -> tuple[Path, Path | None]:
    """``server.onnx`` (+ ``purifier.onnx`` when the run has one) in ``folder``, I/O checked."""
    from privsplit.models import feature_shape

    cfg = model.config
    shape = feature_shape(cfg)
    server = onnx_export.export_server(server_module(model), shape, folder / "server.onnx")
    check_onnx_io(
        server,
        inputs={onnx_export.SERVER_INPUT: (-1, *shape)},
        outputs={onnx_export.SERVER_OUTPUT: (-1, cfg.num_classes)},
    )
    purifier = load_run_purifier(run)
    if purifier is None:
        return server, None
    path = onnx_export.export_purifier(purifier.eval(), cfg.num_classes, folder / "purifier.onnx")
    k = cfg.num_classes
    check_onnx_io(path, inputs={onnx_export.PURIFIER_INPUT: (-1, k)}, outputs={onnx_export.PURIFIER_OUTPUT: (-1, k)})
    return server, path


def check_purifier_parity(purifier, path: Path, probs, *, atol: float = 1e-4, min_close: float = 0.99) -> dict:
    """``purifier.onnx`` vs the torch purifier on real probability vectors ``probs`` (N, K).

    The purifier snaps entries below ``min_prob`` to 0, so a float rounding difference right at the
    threshold legitimately moves one row; hence: every row's argmax equal, and at least ``min_close``
    of the rows within ``atol``. Raises :class:`ExportError` otherwise.
    """
    import numpy as np
    import torch

    from privsplit.export.runtime import ort_session

    probs = np.asarray(probs, dtype=np.float32)
    with torch.no_grad():
        ref = purifier.eval()(torch.from_numpy(probs)).numpy()
    got = ort_session(path).run(None, {onnx_export.PURIFIER_INPUT: probs})[0]
    row_err = np.abs(ref - got).max(axis=1)
    close = float((row_err <= atol).mean())
    same_label = bool((ref.argmax(1) == got.argmax(1)).all())
    if not same_label or close < min_close:
        raise ExportError(
            f"{path.name}: differs from the torch purifier (labels equal: {same_label}, rows within {atol}: "
            f"{100 * close:.1f} %): not shipping it"
        )
    return {"max_abs_err": float(row_err.max()), "rows_within_atol": close, "rows": int(len(probs))}
