"""Pure request handling: dataclasses in, dataclasses out, :class:`ProtocolError` for what is refused.

No grpc, no I/O: the servicer decodes protobuf into :mod:`privsplit.proto.messages`, calls these and
maps a :class:`ProtocolError` to its status code. Every refusal names the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privsplit import __version__
from privsplit.cloud.config import BatchConfig
from privsplit.cloud.model_host import ModelSpec
from privsplit.proto.messages import InferRequest, InferResponse, ModelMetadata, ModelRef, ServerMetadata, Tensor
from privsplit.proto.status import Code, ProtocolError, invalid
from privsplit.proto.wire import (
    BATCH_SIZE,
    COMPUTE_US,
    ENCODER_HASH,
    FEATURES,
    LABEL,
    LABEL_ONLY,
    MANIFEST_HASH,
    OUTPUTS,
    PROBS,
    QUEUE_US,
    SCALE,
    ZERO_POINT,
)

SERVER_NAME = "privsplit"
EXTENSIONS = ("parameters", "model_streaming", "health", "reflection")
_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}
_MAX_SCALE = 1e36  # 255 * scale stays below float32's max
_ACCEPTED = {
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
}


@dataclass(frozen=True, eq=False)
class InferJob:
    """A validated inference request: float32 features and what to return."""

    request_id: str
    features: np.ndarray  # float32 [B, C, h, w]
    outputs: tuple[str, ...]  # names to return, in order

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class Timing:
    """The server's time for a reply. ``queue_us`` / ``batch_size`` tell of other tenants' load: None leaves
    them out of the reply (``privsplit serve`` sends them only with ``--reply-load``)."""

    compute_us: int
    queue_us: int | None = None
    batch_size: int | None = None


def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


def check_model(
    name: str, version: str, spec: ModelSpec, *, name_field: str = "model_name", version_field: str = "model_version"
) -> None:
    """NOT_FOUND unless ``name`` is the hosted model and ``version`` is empty or its version."""
    if name != spec.name:
        raise ProtocolError(
            Code.NOT_FOUND, f"unknown model {name!r}; this server hosts {spec.name!r}", field=name_field
        )
    if version and version != spec.version:
        raise ProtocolError(
            Code.NOT_FOUND, f"model {name!r} has no version {version!r}; it has {spec.version!r}", field=version_field
        )


def model_ready(ref: ModelRef, spec: ModelSpec, *, ready: bool) -> bool:
    try:
        check_model(ref.name, ref.version, spec, name_field="name", version_field="version")
    except ProtocolError:
        return False
    return ready


def model_metadata(ref: ModelRef, spec: ModelSpec) -> ModelMetadata:
    check_model(ref.name, ref.version, spec, name_field="name", version_field="version")
    return spec.metadata()


def _param(request: InferRequest, tensor: Tensor, key: str):
    """A parameter from the tensor, else the request: ``(value, field name)`` or ``(None, None)``."""
    if key in tensor.parameters:
        return tensor.parameters[key], f"inputs[0].parameters[{key!r}]"
    if key in request.parameters:
        return request.parameters[key], f"parameters[{key!r}]"
    return None, None


def _dequantize(request: InferRequest, tensor: Tensor) -> np.ndarray:
    data = tensor.data
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise invalid(
                "inputs[0].contents", f"{bad} NaN or infinite value(s) in {FEATURES!r}; features must be finite"
            )
        return np.ascontiguousarray(data, dtype=np.float32)
    scale, scale_field = _param(request, tensor, SCALE)
    zero_point, zp_field = _param(request, tensor, ZERO_POINT)
    if scale is None:
        raise invalid(
            f"inputs[0].parameters[{SCALE!r}]",
            f"missing: {_ACCEPTED[data.dtype]} features need a {SCALE!r} (double) parameter",
        )
    if zero_point is None:
        raise invalid(
            f"inputs[0].parameters[{ZERO_POINT!r}]",
            f"missing: {_ACCEPTED[data.dtype]} features need a {ZERO_POINT!r} (int64) parameter",
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise invalid(scale_field, f"must be a finite number > 0, got {scale!r}")
    if scale > _MAX_SCALE:
        raise invalid(scale_field, f"{scale!r} overflows float32 when dequantizing (must be <= {_MAX_SCALE:g})")
    low, high = _RANGES[data.dtype]
    if isinstance(zero_point, bool) or not isinstance(zero_point, int) or not low <= zero_point <= high:
        raise invalid(
            zp_field, f"must be an integer in [{low}, {high}] for {_ACCEPTED[data.dtype]}, got {zero_point!r}"
        )
    # |q - zero_point| <= 255, so with scale <= _MAX_SCALE every value is finite
    return _table(data.dtype, zero_point, scale)[data.view(np.uint8)]


_TABLES: dict[tuple, np.ndarray] = {}


def _table(dtype: np.dtype, zero_point: int, scale: float) -> np.ndarray:
    """The 256 float32 values ``(q - zero_point) * scale`` of every 8-bit code, indexed by its byte: one
    gather per request instead of three passes, with the same float32 arithmetic (bit-identical)."""
    key = (dtype, zero_point, scale)
    table = _TABLES.get(key)
    if table is None:
        table = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
        table -= np.float32(zero_point)
        table *= np.float32(scale)
        if len(_TABLES) >= 256:  # bounded: devices may quantize with many scales
            _TABLES.clear()
        _TABLES[key] = table
    return table


def parse_infer(request: InferRequest, spec: ModelSpec, limits: BatchConfig) -> InferJob:
    """Validate a ModelInfer request against the hosted model; return the job or raise ProtocolError."""
    check_model(request.model_name, request.model_version, spec)
    if len(request.inputs) != 1:
        raise invalid("inputs", f"expected exactly one input {FEATURES!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != FEATURES:
        raise invalid("inputs[0].name", f"unknown input {tensor.name!r}; the model takes {FEATURES!r}")
    if tensor.data.dtype not in _ACCEPTED:
        raise invalid("inputs[0].datatype", f"{tensor.datatype.value} is not accepted; send INT8, UINT8, FP16 or FP32")
    c, h, w = spec.feature_shape
    shape = tensor.shape
    if len(shape) != 4 or shape[1:] != (c, h, w):
        raise invalid("inputs[0].shape", f"expected [B, {c}, {h}, {w}], got {list(shape)}")
    if not 1 <= shape[0] <= limits.max_request_batch:
        raise invalid("inputs[0].shape", f"batch dimension must be in [1, {limits.max_request_batch}], got {shape[0]}")

    encoder_hash, hash_field = _param(request, tensor, ENCODER_HASH)
    if encoder_hash is None:
        raise invalid(f"parameters[{ENCODER_HASH!r}]", "missing: send the sha256 hex of the edge encoder artefact")
    if not isinstance(encoder_hash, str):
        raise invalid(hash_field, f"must be a string (sha256 hex), got {type(encoder_hash).__name__}")
    if encoder_hash.lower() not in spec.accepted_encoder_hashes:
        raise ProtocolError(
            Code.FAILED_PRECONDITION,
            f"encoder {encoder_hash[:16]!r}... is not accepted by model {spec.name!r} version {spec.version!r}: "
            "the device runs an encoder from another export; flash the edge bundle exported with this cloud bundle",
            field=hash_field,
        )
    _check_manifest_hash(request, tensor, spec)

    label_only, lo_field = _param(request, tensor, LABEL_ONLY)
    if label_only is not None and not isinstance(label_only, bool):
        raise invalid(lo_field, f"must be a bool, got {label_only!r}")
    if request.outputs:
        names = []
        for i, out in enumerate(request.outputs):
            if out.name not in OUTPUTS:
                raise invalid(
                    f"outputs[{i}].name", f"unknown output {out.name!r}; the model returns {', '.join(OUTPUTS)}"
                )
            if out.name in names:
                raise invalid(f"outputs[{i}].name", f"output {out.name!r} requested twice")
            names.append(out.name)
        if label_only and PROBS in names:
            raise invalid(f"parameters[{LABEL_ONLY!r}]", f"label_only is set but output {PROBS!r} is requested")
        outputs = tuple(names)
    else:
        outputs = (LABEL,) if label_only else OUTPUTS
    return InferJob(request_id=request.id, features=_dequantize(request, tensor), outputs=outputs)


def _check_manifest_hash(request: InferRequest, tensor: Tensor, spec: ModelSpec) -> None:
    """The device's signed edge manifest must be one the cloud bundle lists (``accepted_manifest_hashes``).

    A request without ``manifest_hash`` (a client older than the parameter) is judged by ``encoder_hash`` alone,
    which stays required; a cloud bundle exported before manifests were listed checks no manifest hash."""
    manifest_hash, hash_field = _param(request, tensor, MANIFEST_HASH)
    if manifest_hash is None:
        return
    if not isinstance(manifest_hash, str):
        raise invalid(hash_field, f"must be a string (sha256 hex), got {type(manifest_hash).__name__}")
    if spec.accepted_manifest_hashes and manifest_hash.lower() not in spec.accepted_manifest_hashes:
        accepted = ", ".join(h[:16] + "..." for h in sorted(spec.accepted_manifest_hashes))
        raise ProtocolError(
            Code.FAILED_PRECONDITION,
            f"edge manifest {manifest_hash[:16]!r}... is not accepted by model {spec.name!r} version "
            f"{spec.version!r} (it accepts {accepted}): the device's manifest.json was edited or comes from "
            "another export (noise, quantization or preprocessing differ); flash the edge bundle exported with "
            "this cloud bundle",
            field=hash_field,
        )


def build_response(
    job: InferJob, spec: ModelSpec, probs: np.ndarray, labels: np.ndarray, timing: Timing
) -> InferResponse:
    data = {PROBS: probs, LABEL: labels}
    parameters = {COMPUTE_US: timing.compute_us}
    if timing.queue_us is not None:
        parameters[QUEUE_US] = timing.queue_us
    if timing.batch_size is not None:
        parameters[BATCH_SIZE] = timing.batch_size
    return InferResponse(
        model_name=spec.name,
        model_version=spec.version,
        id=job.request_id,
        parameters=parameters,
        outputs=tuple(Tensor(name, data[name]) for name in job.outputs),
    )
