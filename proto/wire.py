"""privsplit's use of the protocol: tensor and parameter names, the feature request and its prediction.

The edge client builds requests with :func:`features_request` and reads replies with
:meth:`Prediction.from_response`; the cloud servicer accepts exactly what these produce.

Request (``ModelInfer``):
  input ``features``: ``[B, C, h, w]`` INT8 / UINT8 (with tensor or request parameters ``scale``
  (double) and ``zero_point`` (int64): ``x = (q - zero_point) * scale``) or FP16 / FP32;
  request parameter ``encoder_hash`` (sha256 hex of the edge encoder artefact; the server refuses
  encoders its bundle does not list), ``manifest_hash`` (sha256 hex of the edge bundle's signed
  manifest.json: its noise, quantization, preprocessing and encoders; the server refuses manifests its
  bundle does not list; a client that sends none is judged by ``encoder_hash`` alone), optional
  ``label_only`` (bool).
Reply: ``probs`` FP32 ``[B, K]`` (purified when the bundle has a purifier) and ``label`` INT64 ``[B]``
  (argmax of ``probs``); parameters ``compute_us``, ``queue_us`` (the server's own time: batch compute
  and queue wait) and ``batch_size`` (rows in the batch this request ran in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privsplit.proto.messages import InferRequest, InferResponse, ParamValue, RequestedOutput, Tensor
from privsplit.proto.status import Code, ProtocolError

DEFAULT_MODEL_NAME = "privsplit"
FEATURES = "features"
PROBS = "probs"
LABEL = "label"
OUTPUTS = (PROBS, LABEL)

ENCODER_HASH = "encoder_hash"
MANIFEST_HASH = "manifest_hash"
SCALE = "scale"
ZERO_POINT = "zero_point"
LABEL_ONLY = "label_only"

COMPUTE_US = "compute_us"
QUEUE_US = "queue_us"
BATCH_SIZE = "batch_size"

QUANTIZED_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


def features_request(
    features: np.ndarray,
    *,
    encoder_hash: str,
    manifest_hash: str | None = None,
    scale: float | None = None,
    zero_point: int | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    model_version: str = "",
    label_only: bool = False,
    request_id: str = "",
) -> InferRequest:
    """A ModelInfer request for ``features`` ``[B, C, h, w]`` (int8/uint8 with scale and zero point, or float)."""
    features = np.asarray(features)
    if features.ndim != 4:
        raise ValueError(f"features must be [B, C, h, w], got shape {features.shape}")
    params = {}
    if features.dtype in QUANTIZED_DTYPES:
        if scale is None or zero_point is None:
            raise ValueError(f"{features.dtype} features need scale and zero_point")
        params = {SCALE: float(scale), ZERO_POINT: int(zero_point)}
    elif features.dtype not in FLOAT_DTYPES:
        raise ValueError(f"features must be int8, uint8, float16 or float32, got {features.dtype}")
    request_params: dict[str, ParamValue] = {ENCODER_HASH: encoder_hash}
    if manifest_hash is not None:
        request_params[MANIFEST_HASH] = manifest_hash
    if label_only:
        request_params[LABEL_ONLY] = True
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        parameters=request_params,
        inputs=(Tensor(FEATURES, features, params),),
        outputs=(RequestedOutput(LABEL),) if label_only else (),
    )


@dataclass(frozen=True, eq=False)
class Prediction:
    """A reply to :func:`features_request`: labels, probabilities (None when label-only) and server timing."""

    label: np.ndarray  # int64 [B]
    probs: np.ndarray | None  # float32 [B, K]
    compute_us: int
    queue_us: int
    batch_size: int
    model_version: str = ""
    request_id: str = ""

    @classmethod
    def from_response(cls, response: InferResponse) -> Prediction:
        names = {t.name: t for t in response.outputs}
        if LABEL not in names:
            raise ProtocolError(
                Code.INTERNAL, f"the reply has no {LABEL!r} output (got {sorted(names)})", field="outputs"
            )
        probs = names.get(PROBS)
        p = response.parameters
        return cls(
            label=np.asarray(names[LABEL].data, dtype=np.int64),
            probs=None if probs is None else np.asarray(probs.data, dtype=np.float32),
            compute_us=int(p.get(COMPUTE_US, 0)),
            queue_us=int(p.get(QUEUE_US, 0)),
            batch_size=int(p.get(BATCH_SIZE, 0)),
            model_version=response.model_version,
            request_id=response.id,
        )
