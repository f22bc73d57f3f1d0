"""The gRPC servicer: protobuf in, :mod:`privsplit.cloud.handlers` in between, protobuf out.

Thin on purpose: it decodes, calls the pure handlers and the batcher, records metrics and maps a
:class:`ProtocolError` to its status code. Anything unexpected becomes INTERNAL for that request
only; the server keeps serving. Bytes that are not the method's message are refused with
INVALID_ARGUMENT (gRPC alone would answer UNKNOWN).

Admission: every call and every message of a stream is charged to its caller's identity (a device of
``--device-tokens``, else a mutual-TLS certificate's common name, else the peer's IP address) by the rate
limiter (RESOURCE_EXHAUSTED), and a stream's device is re-checked on each message (revoked: UNAUTHENTICATED).

A stream is read at most ``stream_window`` requests ahead of its replies: then the reader stops taking
messages from the client (HTTP/2 flow control holds the rest on the client's side), so a client that
writes fast and never reads cannot grow the server's memory. Submitted requests keep no features. With a
rate limit a stream is also read no faster than its caller's rate: once the caller's bucket is empty the
reader waits for a token (at most :data:`PACE_MAX_S` at a time) before it takes the next message, so a
flooding stream costs the server its rate's worth of work, not a refusal per message it manages to write.
By default, while other callers use the server, each stream is also read no faster than ``--stream-pace``
(:mod:`privsplit.cloud.pacing`): a flood cannot take the CPU the others' requests need.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from privsplit.cloud import handlers
from privsplit.cloud.batcher import DynamicBatcher, Ticket
from privsplit.cloud.config import BatchConfig
from privsplit.cloud.devices import DeviceTokens
from privsplit.cloud.metrics import Metrics
from privsplit.cloud.model_host import ModelSpec
from privsplit.cloud.pacing import StreamPacer
from privsplit.cloud.ratelimit import RateLimiter
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.messages import InferRequest, ModelRef, ResponseEncoder
from privsplit.proto.status import Code, ProtocolError

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name
_NO_FEATURES = np.zeros((0,), np.float32)  # what a submitted job keeps: its features live in the batcher only
_POLL_S = 0.25  # how often a blocked stream reader / writer looks whether its RPC ended
PACE_MAX_S = 1.0  # a rate-limited stream's reader waits at most this long for a token; then the message is refused


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
    """A request on its way: the validated job (without its features) and its batcher ticket, or the error
    that refused it."""

    __slots__ = ("started", "job", "rows", "ticket", "error", "timeout")

    def __init__(
        self, started: float, job=None, ticket: Ticket | None = None, error: ProtocolError | None = None, timeout=None
    ):
        self.started, self.ticket, self.error, self.timeout = started, ticket, error, timeout
        self.rows = 0 if job is None else job.rows
        self.job = None if job is None else dataclasses.replace(job, features=_NO_FEATURES)


class Who:
    """The caller of an RPC: ``identity`` (rate limiting, messages), for a device its token's entry (``caller``:
    re-checked on each message of a stream), and the ``flow`` the batcher shares its model time by."""

    __slots__ = ("identity", "caller", "flow")

    def __init__(self, identity: str, caller=None, flow=None) -> None:
        self.identity, self.caller, self.flow = identity, caller, flow


def flow_of(context) -> str:
    """The batcher's fairness unit (:mod:`privsplit.cloud.batcher`): a device of ``--device-tokens`` (however many
    connections it opens), else the connection (peer address and port)."""
    caller = getattr(context, "caller", None)
    if caller is not None:
        return f"device {caller.device}"
    return f"connection {context.peer()}"


def caller_of(context) -> Who:
    """Device id (``--device-tokens``), else the client certificate's common name, else the peer's address."""
    flow = flow_of(context)
    caller = getattr(context, "caller", None)
    if caller is not None:
        return Who(f"device {caller.device}", caller, flow)
    try:
        names = context.auth_context().get("x509_common_name")
    except Exception:  # not every context has TLS details
        names = None
    if names:
        return Who(f"certificate {names[0].decode(errors='replace')}", flow=flow)
    peer = context.peer() or "unknown"
    host = peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return Who(f"peer {host.split(':', 1)[1] if ':' in host else host}", flow=flow)


def _remaining(context) -> float | None:
    """Seconds left before the RPC's deadline; None without one (gRPC reports a huge number then)."""
    left = context.time_remaining()
    return None if left is None or left > 1e6 else max(left, 0.0)


def _abort(context, exc: ProtocolError):
    context.abort(grpc.StatusCode[exc.code.value], str(exc))


class InferenceServicer:
    """Open Inference Protocol methods (synchronous; gRPC runs them on its worker threads)."""

    def __init__(
        self,
        *,
        spec: ModelSpec,
        batcher: DynamicBatcher,
        limits: BatchConfig,
        metrics: Metrics,
        state: ServingState,
        devices: DeviceTokens | None = None,
        limiter: RateLimiter | None = None,
        stream_window: int = 64,
        pacer: StreamPacer | None = None,
        reply_load: bool = False,
    ) -> None:
        self.spec = spec
        self.batcher = batcher
        self.limits = limits
        self.metrics = metrics
        self.state = state
        self.devices = devices
        self.limiter = limiter
        self.stream_window = stream_window
        self.pacer = pacer
        self.reply_load = reply_load
        self.peak_stream_backlog = 0  # most requests one stream had read and not yet answered (tests read it)
        self.paced_waits = 0  # times a stream reader waited for --stream-pace (tests read it)
        self._encoder = ResponseEncoder()

    # ---- admission ------------------------------------------------------------------------------------
    def _admit(self, who: Who) -> None:
        """Raise UNAUTHENTICATED for a device revoked since its stream opened, RESOURCE_EXHAUSTED over its rate."""
        caller = who.caller
        if caller is not None and self.devices is not None and not self.devices.active(caller.device, caller.digest):
            raise ProtocolError(
                Code.UNAUTHENTICATED,
                f"device {caller.device!r} was revoked (its line left --device-tokens) while this stream was open",
            )
        if self.limiter is not None:
            self.limiter.take(who.identity)

    def _who(self, context) -> Who:
        """The caller; its identity is worked out only when a rate limit needs it."""
        if self.limiter is None:
            return Who("", getattr(context, "caller", None), flow_of(context))
        return caller_of(context)

    def _gate(self, context) -> None:
        """Admission of a unary call (aborts with the refusal's status)."""
        if self.limiter is None:
            return
        try:
            self._admit(self._who(context))
        except ProtocolError as exc:
            self.metrics.failure(exc.code.value)
            _abort(context, exc)

    # ---- health and metadata --------------------------------------------------------------------------
    @staticmethod
    def _decoded(request, context):
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
        return request

    def ServerLive(self, request, context):
        self._gate(context)
        self._decoded(request, context)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        self._gate(context)
        self._decoded(request, context)
        return pb.ServerReadyResponse(ready=self.state.ready)

    def ModelReady(self, request, context):
        self._gate(context)
        ref = ModelRef.from_proto(self._decoded(request, context))
        return pb.ModelReadyResponse(ready=handlers.model_ready(ref, self.spec, ready=self.state.ready))

    def ServerMetadata(self, request, context):
        self._gate(context)
        self._decoded(request, context)
        return handlers.server_metadata().to_proto()

    def ModelMetadata(self, request, context):
        self._gate(context)
        ref = ModelRef.from_proto(self._decoded(request, context))
        try:
            return handlers.model_metadata(ref, self.spec).to_proto()
        except ProtocolError as exc:
            _abort(context, exc)

    # ---- inference ------------------------------------------------------------------------------------
    def _start(self, request, timeout: float | None, who: Who) -> _Started:
        started = time.perf_counter()
        if self.pacer is not None:
            self.pacer.seen(who.flow)
        self.batcher.expect()  # lets the model thread wait for this request to join a batch
        submitting = False
        try:
            self._admit(who)
            if isinstance(request, Undecodable):
                raise ProtocolError(Code.INVALID_ARGUMENT, request.error)
            job = handlers.parse_infer(InferRequest.from_proto(request), self.spec, self.limits)
            submitting = True
            return _Started(
                started,
                job,
                self.batcher.submit(job.features, timeout_s=timeout, expected=True, flow=who.flow),
                timeout=timeout,
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
        assert pending.ticket is not None and pending.job is not None  # a started request: its error or its ticket
        try:
            result = pending.ticket.result(pending.timeout)
            timing = (
                handlers.Timing(compute_us=result.compute_us, queue_us=result.queue_us, batch_size=result.batch_size)
                if self.reply_load
                else handlers.Timing(compute_us=result.compute_us)  # other tenants' load stays private
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
            rows=pending.rows,
        )
        return reply

    def ModelInfer(self, request, context):
        pending = self._start(request, _remaining(context), self._who(context))
        if pending.ticket is not None and not pending.ticket.done:  # (done: it ran inline)
            context.add_callback(pending.ticket.abandon)  # client gone: skip it if still queued
        try:
            return self._finish(pending)
        except ProtocolError as exc:
            _abort(context, exc)

    def _paced(self, flow, ended: threading.Event) -> bool:
        """Wait until the stream of ``flow`` may read its next message (:mod:`privsplit.cloud.pacing`);
        False: the RPC ended meanwhile."""
        assert self.pacer is not None
        while (pause := self.pacer.delay(flow)) > 0:
            self.paced_waits += 1
            if ended.wait(pause):
                return False
        return True

    def ModelStreamInfer(self, request_iterator, context):
        """Requests are queued as they arrive (so they batch with others); replies go back in request
        order. A failed request gets a reply with ``error_message``; the stream stays open. At most
        ``stream_window`` requests are read ahead of their replies (backpressure, see the module doc)."""
        who = self._who(context)
        pending: queue.Queue = queue.Queue(maxsize=self.stream_window)
        ended = threading.Event()  # the RPC is over (finished, cancelled, client gone)
        context.add_callback(ended.set)
        backlog = [0]  # read and not yet answered
        lock = threading.Lock()

        def put(item) -> bool:
            while not ended.is_set():
                try:
                    pending.put(item, timeout=_POLL_S)  # blocks while the window is full: reading stops
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                for request in request_iterator:
                    with lock:
                        backlog[0] += 1
                        if backlog[0] > self.peak_stream_backlog:
                            self.peak_stream_backlog = backlog[0]
                    item = self._start(request, _remaining(context), who)
                    if not put(item):
                        if item.ticket is not None:
                            item.ticket.abandon()
                        return
                    if self.limiter is not None:  # pace: take the next message when the caller may send it
                        pause = self.limiter.delay(who.identity)
                        if pause > 0 and ended.wait(min(pause, PACE_MAX_S)):
                            return
                    if self.pacer is not None and not self._paced(who.flow, ended):
                        return
            except Exception:  # the client cancelled or the stream broke: stop reading
                pass
            finally:
                put(None)

        threading.Thread(target=read, name="privsplit-stream-reader", daemon=True).start()
        try:
            while True:
                try:
                    item = pending.get(timeout=_POLL_S)
                except queue.Empty:
                    if ended.is_set():
                        return
                    continue
                if item is None:
                    return
                try:
                    reply = _stream_reply(self._finish(item))
                except ProtocolError as exc:
                    reply = pb.ModelStreamInferResponse(error_message=f"{exc.code.value}: {exc}")
                finally:
                    with lock:
                        backlog[0] -= 1
                yield reply
        finally:
            ended.set()
            while True:  # what the client will never receive: skip it if still queued
                try:
                    left = pending.get_nowait()
                except queue.Empty:
                    break
                if left is not None and left.ticket is not None:
                    left.ticket.abandon()


def _stream_reply(response: bytes) -> bytes:
    """A serialised ModelStreamInferResponse holding the serialised ModelInferResponse ``response`` (field 2,
    length-delimited): written directly rather than parsed into a message and serialised again."""
    head, n = bytearray(b"\x12"), len(response)
    while n > 0x7F:
        head.append(0x80 | (n & 0x7F))
        n >>= 7
    head.append(n)
    return bytes(head) + response


def _serialize(reply) -> bytes:
    """ModelInfer and stream replies come serialised already (:class:`ResponseEncoder`); others are messages."""
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
