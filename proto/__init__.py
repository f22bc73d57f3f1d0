"""privsplit.proto: the Open Inference Protocol (gRPC) — sources, generated code and serde.

* ``inference/open_inference_grpc.proto`` and its generated ``_pb2`` / ``_pb2_grpc`` / ``.pyi``
  (``python -m privsplit.proto.codegen`` regenerates them; never edit them by hand);
* :mod:`~privsplit.proto.messages`: dataclasses of the messages with ``to_proto()`` / ``from_proto()``;
* :mod:`~privsplit.proto.wire`: privsplit's tensor and parameter names, :func:`features_request`,
  :class:`Prediction`;
* :mod:`~privsplit.proto.status`: :class:`Code` and :class:`ProtocolError`;
* :mod:`~privsplit.proto.channel`: the one way every client dials (address validation, TLS, token,
  keepalive, generated stubs, error text): :class:`DialConfig`, :func:`dial`, :func:`dial_aio`.

A leaf: numpy, protobuf and (for the stubs) grpcio; no torch. The names below load on first use.
"""

from __future__ import annotations

from privsplit._lazy import lazy_exports

_LAZY = {
    "Code": "privsplit.proto.status",
    "ProtocolError": "privsplit.proto.status",
    "Datatype": "privsplit.proto.datatypes",
    "Tensor": "privsplit.proto.messages",
    "InferRequest": "privsplit.proto.messages",
    "InferResponse": "privsplit.proto.messages",
    "RequestedOutput": "privsplit.proto.messages",
    "StreamInferResponse": "privsplit.proto.messages",
    "ModelRef": "privsplit.proto.messages",
    "ModelMetadata": "privsplit.proto.messages",
    "TensorMetadata": "privsplit.proto.messages",
    "ServerMetadata": "privsplit.proto.messages",
    "features_request": "privsplit.proto.wire",
    "Prediction": "privsplit.proto.wire",
    "DialConfig": "privsplit.proto.channel",
    "ChannelTls": "privsplit.proto.channel",
    "parse_target": "privsplit.proto.channel",
    "dial": "privsplit.proto.channel",
    "dial_aio": "privsplit.proto.channel",
}

__getattr__, __all__ = lazy_exports("privsplit.proto", _LAZY)
