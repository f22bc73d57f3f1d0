"""privsplit.edge: the torch-free on-device runtime. Never import torch (or anything that does) here.

* :class:`EdgePipeline` (:mod:`~privsplit.edge.pipeline`): verified edge bundle -> int8 wire features;
* runtimes (:mod:`~privsplit.edge.runtimes`): ``litert``, ``tflite-runtime``, ``onnxruntime``;
* :class:`EdgeClient` (:mod:`~privsplit.edge.client`): gRPC client with TLS, token, deadlines, retries, streaming;
* :func:`infer_inputs` / :func:`stream_frames` (:mod:`~privsplit.edge.infer`): one result per input;
* :func:`flash` / :func:`rollback` (:mod:`~privsplit.edge.flash`): install a bundle on a device;
* :func:`run_bench` (:mod:`~privsplit.edge.latency`): the on-device latency probe.

Depends on numpy, Pillow, privsplit.bundle and privsplit.proto only (plus the interpreters and grpcio
where used). Importing this package is cheap; the names below load on first use.
"""

from __future__ import annotations

from privsplit._lazy import lazy_exports

_LAZY = {
    "EdgePipeline": "privsplit.edge.pipeline",
    "WireFeatures": "privsplit.edge.pipeline",
    "Item": "privsplit.edge.pipeline",
    "Preprocessor": "privsplit.edge.preprocess",
    "RuntimeName": "privsplit.edge.runtimes",
    "available_runtimes": "privsplit.edge.runtimes",
    "open_runtime": "privsplit.edge.runtimes",
    "EdgeClient": "privsplit.edge.client",
    "ClientConfig": "privsplit.edge.client",
    "ClientTls": "privsplit.edge.client",
    "RetryPolicy": "privsplit.edge.client",
    "ServerUnavailable": "privsplit.edge.client",
    "infer_inputs": "privsplit.edge.infer",
    "stream_frames": "privsplit.edge.infer",
    "InferResult": "privsplit.edge.infer",
    "InferReport": "privsplit.edge.infer",
    "flash": "privsplit.edge.flash",
    "rollback": "privsplit.edge.flash",
    "FlashResult": "privsplit.edge.flash",
    "FlashAction": "privsplit.edge.flash",
    "FlashError": "privsplit.edge.flash",
    "parse_target": "privsplit.edge.flash",
    "current_release": "privsplit.edge.flash",
    "BenchSpec": "privsplit.edge.latency",
    "InputKind": "privsplit.edge.latency",
    "BenchResult": "privsplit.edge.latency",
    "run_bench": "privsplit.edge.latency",
}

__getattr__, __all__ = lazy_exports("privsplit.edge", _LAZY)
