"""The gRPC servicer: protobuf in, :mod:`privsplit.cloud.handlers` in between, protobuf out.

Thin on purpose: it decodes, calls the pure handlers and the batcher, records metrics and maps a
:class:`ProtocolError` to its status code. Anything unexpected becomes INTERNAL for that request
only; the server keeps serving. Bytes that are not the method's message are refused with
INVALID_ARGUMENT (gRPC alone would answer UNKNOWN).
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
from google.protobuf.message import DecodeError

from privsplit.cloud import handlers
from privsplit.cloud.batcher import DynamicBatcher, Ticket
from privsplit.cloud.config import BatchConfig
from privsplit.cloud.metrics import Metrics
from privsplit.cloud.model_host import ModelSpec
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.messages import InferRequest, ModelRef, ResponseEncoder
from privsplit.proto.status import Code, ProtocolError

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name


class Undecodable:
    """Stands in for a request whose bytes are not the method's message (answered INVALID_ARGUMENT)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(message_type):
    name = message_type.DESCRIPTOR.name

    def deserialize(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(f"the request is not a valid {name} message ({exc})")

    return deserialize


class ServingState:
    """Readiness shared by the servicer, the health service and the drain."""

    def __init__(self, metrics: Metrics) -> None:
        self.ready = False
        self._metrics = metrics

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self._metrics.ready(ready)


class _Started:
    """A request on its way: the validated job and its batcher ticket, or the error that refused it."""

    __slots__ = ("started", "job", "ticket", "error", "timeout")

    def __init__(
        self, started: float, job=None, ticket: Ticket | None = None, error: ProtocolError | None = None, timeout=None
    ):
        self.started, self.job, self.ticket, self.error, self.timeout = started, job, ticket, error, timeout


def _remaining(context) -> float | None:
    """Seconds left before the RPC's deadline; None without one (gRPC reports a huge number then)."""
    left = context.time_remaining()
    return None if left is None or left > 1e6 else max(left, 0.0)


def _abort(context, exc: ProtocolError):
    context.abort(grpc.StatusCode[exc.code.value], str(exc))


class InferenceServicer:
    """Open Inference Protocol methods (synchronous; gRPC runs them on its worker threads)."""

    def __init__(
        self, *, spec: ModelSpec, batcher: DynamicBatcher, limits: BatchConfig, metrics: Metrics, state: ServingState
    ) -> None:
        self.spec = spec
        self.batcher = batcher
        self.limits = limits
        self.metrics = metrics
        self.state = state
        self._encoder = ResponseEncoder()

    # ---- health and metadata --------------------------------------------------------------------------
    @staticmethod
    def _decoded(request, context):
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
        return request

    def ServerLive(self, request, context):
        self._decoded(request, context)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        self._decoded(request, context)
        return pb.ServerReadyResponse(ready=self.state.ready)

    def ModelReady(self, request, context):
        ref = ModelRef.from_proto(self._decoded(request, context))
        return pb.ModelReadyResponse(ready=handlers.model_ready(ref, self.spec, ready=self.state.ready))

    def ServerMetadata(self, request, context):
        self._decoded(request, context)
        return handlers.server_metadata().to_proto()

    def ModelMetadata(self, request, context):
        ref = ModelRef.from_proto(self._decoded(request, context))
        try:
            return handlers.model_metadata(ref, self.spec).to_proto()
        except ProtocolError as exc:
            _abort(context, exc)

    # ---- inference ------------------------------------------------------------------------------------
    def _start(self, request, timeout: float | None) -> _Started:
        started = time.perf_counter()
        self.batcher.expect()  # lets the model thread wait for this request to join a batch
        submitting = False
        try:
            if isinstance(request, Undecodable):
                raise ProtocolError(Code.INVALID_ARGUMENT, request.error)
            job = handlers.parse_infer(InferRequest.from_proto(request), self.spec, self.limits)
            submitting = True
            return _Started(
                started, job, self.batcher.submit(job.features, timeout_s=timeout, expected=True), timeout=timeout
            )
        except ProtocolError as exc:
            error = exc
        except Exception as exc:  # never let one request take the server down
            error = ProtocolError(Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        if not submitting:
            self.batcher.unexpect()
        self.metrics.failure(error.code.value)
        return _Started(started, error=error)

    def _finish(self, pending: _Started) -> bytes:
        """The serialised reply of a started request (raises its ProtocolError)."""
        if pending.error is not None:
            raise pending.error
        assert pending.ticket is not None  # a started request holds its error or its ticket
        try:
            result = pending.ticket.result(pending.timeout)
            timing = handlers.Timing(
                compute_us=result.compute_us, queue_us=result.queue_us, batch_size=result.batch_size
            )
            reply = self._encoder.encode(
                handlers.build_response(pending.job, self.spec, result.probs, result.labels, timing)
            )
        except ProtocolError as exc:
            self.metrics.failure(exc.code.value)
            raise
        except Exception as exc:
            self.metrics.failure(Code.INTERNAL.value)
            raise ProtocolError(Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}") from exc
        self.metrics.success(
            request_us=int((time.perf_counter() - pending.started) * 1e6),
            queue_us=result.queue_us,
            rows=pending.job.rows,
        )
        return reply

    def ModelInfer(self, request, context):
        pending = self._start(request, _remaining(context))
        if pending.ticket is not None and not pending.ticket.done:  # (done: it ran inline)
            context.add_callback(pending.ticket.abandon)  # client gone: skip it if still queued
        try:
            return self._finish(pending)
        except ProtocolError as exc:
            _abort(context, exc)

    def ModelStreamInfer(self, request_iterator, context):
        """Requests are queued as they arrive (so they batch with others); replies go back in request
        order. A failed request gets a reply with ``error_message``; the stream stays open."""
        pending: queue.SimpleQueue = queue.SimpleQueue()

        def read() -> None:
            try:
                for request in request_iterator:
                    pending.put(self._start(request, _remaining(context)))
            except Exception:  # the client cancelled or the stream broke: stop reading
                pass
            finally:
                pending.put(None)

        threading.Thread(target=read, name="privsplit-stream-reader", daemon=True).start()
        while True:
            item = pending.get()
            if item is None:
                return
            try:
                reply = pb.ModelStreamInferResponse()
                reply.infer_response.MergeFromString(self._finish(item))
                yield reply
            except ProtocolError as exc:
                yield pb.ModelStreamInferResponse(error_message=f"{exc.code.value}: {exc}")


def _serialize(reply) -> bytes:
    """ModelInfer replies come serialised already (:class:`ResponseEncoder`); others are messages."""
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


def add_to_server(servicer: InferenceServicer, server) -> None:
    """Register ``servicer`` like the generated ``add_..._to_server``, but with request decoding that
    never escapes as UNKNOWN (see :class:`Undecodable`)."""
    method_handlers = {}
    for method in SERVICE.methods:
        kind = grpc.stream_stream_rpc_method_handler if method.client_streaming else grpc.unary_unary_rpc_method_handler
        method_handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(getattr(pb, method.input_type.name)),
            response_serializer=_serialize,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, method_handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, method_handlers)
