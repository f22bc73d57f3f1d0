"""A KServe runtime for a cloud bundle: :class:`PrivsplitModel` hosts it in KServe's own ``ModelServer``.

``privsplit serve BUNDLE --engine kserve`` calls :func:`serve_kserve`. The bundle is opened by the same
:class:`~privsplit.cloud.model_host.ModelHost` (hashes checked; the signature with ``--trust-key``) and every
request goes through the same :mod:`~privsplit.cloud.handlers` as ``privsplit serve``, so the answers are the
same; only the server around them is KServe's (no dynamic batching: each request runs on its own, in
KServe's event loop; no TLS, token or metrics of ours: the platform in front provides them).

KServe pins ``protobuf<7``: this module runs in the environment of the ``kserve`` extra (README, "Deploying at
scale"), never imported by the default server. KServe's copy of the Open Inference Protocol has no
``double_param`` / ``uint64_param``, and its request decoding drops tensor parameters it cannot type, which
would lose the ``scale`` the edge sends as a double on the ``features`` tensor. So the gRPC request is also kept
as received (:class:`_WireRequest`) and decoded with privsplit's protocol: nothing the client sent is lost.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privsplit.errors import ConfigError, MissingDependencyError

INSTALL_HINT = (
    "KServe is not installed in this environment; it pins protobuf<7, so install it into its own virtualenv: "
    "python3 -m venv .venv-kserve && .venv-kserve/bin/pip install -e '.[kserve]' (or 'privsplit[kserve]'), "
    "then run .venv-kserve/bin/privsplit serve BUNDLE --engine kserve"
)
DEFAULT_HTTP_PORT = 8080  # KServe's REST port


@dataclass(frozen=True)
class KServeConfig:
    """What ``privsplit serve --engine kserve`` starts KServe's ModelServer with."""

    bundle: Path
    model_name: str = "privsplit"
    grpc_port: int = 8001
    http_port: int = DEFAULT_HTTP_PORT  # KServe always serves REST as well (0 picks a free port)
    trust_key: Path | None = None
    threads: int = 1  # onnxruntime intra-op threads
    max_request_batch: int = 256
    grace_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(f"--model-name must be a non-empty name without '/', got {self.model_name!r}")
        if not 1 <= self.grpc_port <= 65535:
            raise ConfigError(
                f"--port must be in [1, 65535] with --engine kserve (KServe does not report a port it picked), "
                f"got {self.grpc_port}"
            )
        if not 0 <= self.http_port <= 65535 or self.http_port == self.grpc_port:
            raise ConfigError(f"--http-port must be in [0, 65535] and differ from --port, got {self.http_port}")


_PB_MODULE = "privsplit.proto.inference.open_inference_grpc_pb2"


def _isolate_protocol() -> None:
    """Load privsplit's generated protocol module into a private descriptor pool.

    KServe's generated code defines the same ``inference.*`` messages in protobuf's default pool, and one pool
    refuses a second definition of a name. The generated module asks ``descriptor_pool.Default()`` for its
    pool when it runs, so it runs once with that pointing at a pool of its own; its classes work as usual.
    """
    import importlib.util

    from google.protobuf import descriptor_pool

    loaded = sys.modules.get(_PB_MODULE)
    if loaded is not None:
        if loaded.DESCRIPTOR.pool is descriptor_pool.Default() and "kserve" not in sys.modules:
            raise ConfigError(
                "privsplit's protocol module was loaded before KServe's, so the two cannot share the process; "
                "start the KServe engine in a process of its own: privsplit serve BUNDLE --engine kserve"
            )
        return
    spec = importlib.util.find_spec(_PB_MODULE)
    assert spec is not None and spec.loader is not None  # part of this package
    module = importlib.util.module_from_spec(spec)
    default = descriptor_pool.Default
    private = descriptor_pool.DescriptorPool()
    descriptor_pool.Default = lambda: private
    try:
        spec.loader.exec_module(module)
    finally:
        descriptor_pool.Default = default
    sys.modules[_PB_MODULE] = module


def _kserve():
    """Import kserve with an empty command line: ``kserve.model_server`` parses ``sys.argv`` when imported
    and would take privsplit's own flags (``--workers``) for its own."""
    _isolate_protocol()
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
        from kserve.protocol.grpc import servicer
    except ImportError as exc:
        raise MissingDependencyError(INSTALL_HINT) from exc
    finally:
        sys.argv = saved
    return kserve, servicer


def _grpc_error(exc) -> Exception:
    """A ProtocolError as the exception KServe's gRPC interceptor turns into exactly this status and message."""
    from grpc import StatusCode
    from grpc_interceptor.exceptions import GrpcException

    return GrpcException(details=str(exc), status_code=StatusCode[exc.code.value])


def _tensor(meta) -> dict:
    return {"name": meta.name, "datatype": meta.datatype.value, "shape": list(meta.shape)}


def build_model(config: KServeConfig) -> Any:
    """Open and verify the bundle; return a ready KServe model hosting it."""
    kserve, servicer = _kserve()
    from kserve.errors import InvalidInput
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as kserve_pb
    from kserve.protocol.infer_type import InferRequest as KServeRequest

    from privsplit.cloud import handlers
    from privsplit.cloud.config import BatchConfig
    from privsplit.cloud.model_host import ModelHost
    from privsplit.proto.inference import open_inference_grpc_pb2 as pb
    from privsplit.proto.messages import InferRequest
    from privsplit.proto.status import Code, ProtocolError

    class _WireRequest(KServeRequest):
        """KServe's decoded request, plus the request message as received (see the module docstring)."""

        wire: bytes | None = None

        @classmethod
        def from_grpc(cls, request):
            decoded = super().from_grpc(request)
            decoded.wire = request.SerializeToString()
            return decoded

    servicer.InferRequest = _WireRequest  # the name KServe's gRPC servicer decodes ModelInfer requests with

    host = ModelHost.open(config.bundle, name=config.model_name, trust_key=config.trust_key, threads=config.threads)
    limits = BatchConfig(max_batch=1, max_request_batch=config.max_request_batch)

    base: Any = kserve.Model

    class PrivsplitModel(base):
        """The server layers and purifier of a verified cloud bundle, answering like ``privsplit serve``."""

        def __init__(self) -> None:
            super().__init__(config.model_name)
            self.host = host
            self.spec = host.spec
            self.ready = True

        def get_input_types(self) -> list[dict]:
            return [_tensor(t) for t in self.spec.metadata().inputs]

        def get_output_types(self) -> list[dict]:
            return [_tensor(t) for t in self.spec.metadata().outputs]

        def predict(self, payload, headers=None):
            wire = getattr(payload, "wire", None)
            if wire is None:
                raise InvalidInput(
                    "privsplit's KServe runtime answers inference over gRPC (Open Inference Protocol v2) only; "
                    f"send ModelInfer to the gRPC port {config.grpc_port}"
                )
            try:
                request = InferRequest.from_proto(pb.ModelInferRequest.FromString(wire))
                job = handlers.parse_infer(request, self.spec, limits)
                out = self.host.infer(job.features)
            except ProtocolError as exc:
                raise _grpc_error(exc) from None
            except Exception as exc:  # one request fails, the server keeps serving (as privsplit serve)
                internal = ProtocolError(Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
                raise _grpc_error(internal) from None
            timing = handlers.Timing(compute_us=out.compute_us, queue_us=0, batch_size=job.rows)
            reply = handlers.build_response(job, self.spec, out.probs, out.labels, timing).to_proto()
            return kserve_pb.ModelInferResponse.FromString(reply.SerializeToString())

    return PrivsplitModel()


def serve_kserve(config: KServeConfig, *, log=None) -> int:
    """Run KServe's ModelServer with the bundle until SIGTERM / SIGINT (KServe's own handling); return 0."""
    from privsplit.cloud.logs import logger

    log = log or logger.info
    model = build_model(config)
    kserve, _servicer = _kserve()
    spec = model.spec
    server = kserve.ModelServer(
        grpc_port=config.grpc_port,
        http_port=config.http_port,
        workers=1,
        enable_grpc=True,
        grace_period=int(round(config.grace_s)),
    )
    log(
        f"KServe ModelServer: gRPC on [::]:{config.grpc_port}, REST on [::]:{config.http_port} (KServe listens on "
        f"all interfaces); model {spec.name!r} version {spec.version!r}, {spec.num_classes} classes, "
        f"purifier {'on' if spec.purifier else 'off'}; no batching"
    )
    server.start([model])
    return 0
