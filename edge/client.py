"""The device's gRPC client to the cloud (Open Inference Protocol, via :mod:`privsplit.proto`).

* TLS (``ClientTls(ca=...)``) and mutual TLS (``cert`` + ``key``); a bearer token sent as
  ``authorization: Bearer <token>`` metadata on every call;
* a deadline on every call (``timeout_s`` per attempt; ``stream_timeout_s`` for a whole stream);
* bounded retries on UNAVAILABLE with exponential backoff and jitter (:class:`RetryPolicy`), then
  :class:`ServerUnavailable` naming the address and what to check; every other refusal raises
  :class:`~privsplit.proto.status.ProtocolError` with the server's status code and message;
* streaming (``ModelStreamInfer``) for camera-rate input: requests flow while replies come back in
  order; if the connection drops, the unanswered requests are re-sent on a new stream (same retry
  budget); every request yields a reply or an explicit error.

gRPC's own transparent retries are switched off so the retry budget here is the only one.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from privsplit.errors import ConfigError
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.messages import InferResponse, ModelMetadata
from privsplit.proto.status import Code, ProtocolError
from privsplit.proto.wire import DEFAULT_MODEL_NAME, Prediction

SERVICE = "/inference.GRPCInferenceService/"
AUTH_HEADER = "authorization"


class ServerUnavailable(ProtocolError):
    """The server could not be reached (or kept answering UNAVAILABLE) within the retry budget."""

    exit_code = 7

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNAVAILABLE, message)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; before try k+1 sleep ``d = min(max_backoff, initial * multiplier**k)``
    scaled by ``1 - jitter * U[0, 1)`` (jitter 1 = "full jitter", 0 = none)."""

    attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {self.attempts}")
        if not (0 <= self.initial_backoff_s <= self.max_backoff_s) or self.multiplier < 1:
            raise ConfigError("backoff needs 0 <= initial <= max and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to sleep before retry number ``retry`` (0-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry)
        return base * (1.0 - self.jitter * rng.random())


@dataclass(frozen=True)
class ClientTls:
    """``ca``: PEM roots that verify the server (turns TLS on); ``cert`` + ``key``: the device's
    certificate for mutual TLS; ``server_name``: override the name checked against the certificate."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--tls-cert and --tls-key go together (mutual TLS needs both)")

        def read(path, what):
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca, "--tls-ca"), private_key=read(self.key, "--tls-key"),
            certificate_chain=read(self.cert, "--tls-cert"),
        )  # fmt: skip


@dataclass(frozen=True)
class ClientConfig:
    target: str  # HOST:PORT
    tls: ClientTls | None = None
    token: str | None = None
    timeout_s: float = 10.0  # deadline of each unary call attempt
    stream_timeout_s: float = 3600.0  # deadline of one ModelStreamInfer stream
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    model_name: str = DEFAULT_MODEL_NAME
    max_message_bytes: int = 16 * 1024 * 1024
    seed: int | None = None  # of the backoff jitter (None: OS entropy)

    def __post_init__(self) -> None:
        if not self.target or ":" not in self.target:
            raise ConfigError(f"--server must be HOST:PORT, got {self.target!r}")
        if not self.timeout_s > 0 or not self.stream_timeout_s > 0:
            raise ConfigError("deadlines must be > 0 s")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ConfigError("the bearer token must be one word without spaces")


@dataclass(frozen=True, eq=False)
class StreamReply:
    """One streamed request's outcome: a prediction, or the error that request got."""

    request_id: str
    prediction: Prediction | None = None
    error: str | None = None
    code: Code | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _code(exc: grpc.RpcError) -> Code:
    try:
        return Code(exc.code().name)
    except (ValueError, AttributeError):
        return Code.INTERNAL


def _details(exc: grpc.RpcError) -> str:
    try:
        return exc.details() or exc.code().name
    except AttributeError:
        return str(exc)


class EdgeClient:
    """A channel to one server. Use as a context manager, or call :meth:`close`."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        backoff_ms = max(1, int(config.retry.initial_backoff_s * 1000))
        options: list[tuple[str, str | int]] = [
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # reconnect as soon as our own backoff asks (gRPC's default waits 1 s after a failed connect);
            # grpc.min_reconnect_backoff_ms stays default: it is the connect timeout, and slow links need it
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", max(backoff_ms, int(config.retry.max_backoff_s * 1000))),
        ]
        if config.tls is None:
            self._channel = grpc.insecure_channel(config.target, options=options)
        else:
            if config.tls.server_name:
                options.append(("grpc.ssl_target_name_override", config.tls.server_name))
            self._channel = grpc.secure_channel(config.target, config.tls.credentials(), options=options)
        self._metadata = ((AUTH_HEADER, f"Bearer {config.token}"),) if config.token else ()
        raw = lambda method, out: self._channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=out.FromString)  # noqa: E731
        self._infer = raw("ModelInfer", pb.ModelInferResponse)
        self._ready = raw("ServerReady", pb.ServerReadyResponse)
        self._model_ready = raw("ModelReady", pb.ModelReadyResponse)
        self._metadata_call = raw("ModelMetadata", pb.ModelMetadataResponse)
        self._stream = self._channel.stream_stream(
            SERVICE + "ModelStreamInfer", request_serializer=None, response_deserializer=pb.ModelStreamInferResponse.FromString
        )
        self.retries = 0  # UNAVAILABLE retries made so far (all calls)

    # ---- unary calls with retries ------------------------------------------------------------------
    def _unavailable(self, attempts: int, started: float, exc: grpc.RpcError | None) -> ServerUnavailable:
        what = "" if exc is None else f" ({_details(exc)})"
        return ServerUnavailable(
            f"cannot reach the server at {self.config.target} after {attempts} attempt(s) in "
            f"{time.monotonic() - started:.1f} s{what}: check --server, that `privsplit serve` runs there and "
            "is reachable, and the TLS settings (--tls-ca/--tls-cert/--tls-key)"
        )

    def _call(self, method, payload: bytes):
        started = time.monotonic()
        policy = self.config.retry
        for attempt in range(policy.attempts):
            try:
                return method(payload, timeout=self.config.timeout_s, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = _code(exc)
                if code is not Code.UNAVAILABLE:
                    if code is Code.DEADLINE_EXCEEDED:
                        raise ProtocolError(code, f"no reply from {self.config.target} within the {self.config.timeout_s:g} s deadline") from None
                    raise ProtocolError(code, f"{self.config.target} refused the request: {_details(exc)}") from None
                if attempt + 1 == policy.attempts:
                    raise self._unavailable(attempt + 1, started, exc) from None
                self.retries += 1
                time.sleep(policy.delay(attempt, self._rng))
        raise AssertionError("unreachable")  # pragma: no cover

    def infer_payload(self, payload: bytes) -> Prediction:
        """Send one serialised ``ModelInferRequest``; return its prediction."""
        return Prediction.from_response(InferResponse.from_proto(self._call(self._infer, payload)))

    def infer(self, request) -> Prediction:
        """Send an :class:`~privsplit.proto.messages.InferRequest` (see :func:`privsplit.proto.wire.features_request`)."""
        return self.infer_payload(request.to_proto().SerializeToString())

    def server_ready(self) -> bool:
        return bool(self._call(self._ready, pb.ServerReadyRequest().SerializeToString()).ready)

    def model_ready(self) -> bool:
        msg = pb.ModelReadyRequest(name=self.config.model_name).SerializeToString()
        return bool(self._call(self._model_ready, msg).ready)

    def model_metadata(self) -> ModelMetadata:
        msg = pb.ModelMetadataRequest(name=self.config.model_name).SerializeToString()
        return ModelMetadata.from_proto(self._call(self._metadata_call, msg))

    # ---- streaming ----------------------------------------------------------------------------------
    def stream(self, requests: Iterable[tuple[str, bytes]]) -> Iterator[StreamReply]:
        """Stream ``(request_id, serialised ModelInferRequest)`` pairs; yield one :class:`StreamReply`
        per request, in request order. Request ids must be unique and non-empty.

        Requests are pulled from ``requests`` only as the stream sends them. If the stream fails with
        UNAVAILABLE, the unanswered requests are re-sent on a new stream after a backoff (at most
        ``retry.attempts`` streams in all without progress); when the budget is spent, or on another
        error, every unanswered request gets an error reply and :class:`ProtocolError` is raised.
        """
        source = iter(requests)
        lock = threading.Lock()
        pending: collections.OrderedDict[str, bytes] = collections.OrderedDict()  # sent (or about to be), unanswered
        state = {"exhausted": False, "generation": 0}
        policy = self.config.retry
        failures, started = 0, time.monotonic()

        def outgoing(backlog: list[tuple[str, bytes]], generation: int):
            for _rid, payload in backlog:
                yield payload
            while True:
                with lock:
                    if generation != state["generation"]:  # this stream failed: its successor sends from here
                        return
                    try:
                        rid, payload = next(source)
                    except StopIteration:
                        state["exhausted"] = True
                        return
                    if not rid or rid in pending:
                        raise ConfigError(f"stream request ids must be unique and non-empty, got {rid!r}")
                    pending[rid] = payload
                yield payload

        backlog: list[tuple[str, bytes]] = []
        while True:
            call = self._stream(outgoing(backlog, state["generation"]), timeout=self.config.stream_timeout_s, metadata=self._metadata)
            try:
                for msg in call:
                    with lock:
                        if not pending:
                            raise ProtocolError(Code.INTERNAL, "the server replied to a request that was not sent")
                        rid = next(iter(pending))
                        got = msg.infer_response.id if msg.HasField("infer_response") else ""
                        if got and got != rid:
                            raise ProtocolError(Code.INTERNAL, f"reply for {got!r} arrived while {rid!r} was the oldest unanswered request")
                        del pending[rid]
                    failures = 0
                    if msg.error_message:
                        code_name = msg.error_message.split(":", 1)[0]
                        code = Code(code_name) if code_name in Code.__members__ else Code.INTERNAL
                        yield StreamReply(request_id=rid, error=msg.error_message, code=code)
                    else:
                        yield StreamReply(request_id=rid, prediction=Prediction.from_response(InferResponse.from_proto(msg.infer_response)))
                with lock:
                    if state["exhausted"] and not pending:
                        return
                    # the server closed the stream early: treat like a dropped connection
                    raise _StreamDropped("the server ended the stream before answering every request")
            except (grpc.RpcError, _StreamDropped) as exc:
                code = _code(exc) if isinstance(exc, grpc.RpcError) else Code.UNAVAILABLE
                call.cancel()
                failures += 1
                with lock:
                    state["generation"] += 1
                    backlog = list(pending.items())
                if code is Code.UNAVAILABLE and failures < policy.attempts:
                    self.retries += 1
                    time.sleep(policy.delay(failures - 1, self._rng))
                    continue
                if code is Code.UNAVAILABLE:
                    error: ProtocolError = self._unavailable(failures, started, exc if isinstance(exc, grpc.RpcError) else None)
                elif code is Code.DEADLINE_EXCEEDED:
                    error = ProtocolError(code, f"the stream to {self.config.target} passed its {self.config.stream_timeout_s:g} s deadline")
                else:
                    error = ProtocolError(code, f"{self.config.target} refused the stream: {_details(exc)}")
                for rid, _ in backlog:
                    yield StreamReply(request_id=rid, error=str(error), code=error.code)
                raise error from None

    # ---- lifecycle ----------------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _StreamDropped(Exception):
    pass
