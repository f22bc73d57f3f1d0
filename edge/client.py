"""The device's gRPC client to the cloud (Open Inference Protocol, via :mod:`privsplit.proto`).

* TLS (``ClientTls(ca=...)``) and mutual TLS (``cert`` + ``key``); a bearer token sent as
  ``authorization: Bearer <token>`` metadata on every call;
* a deadline on every call (``timeout_s`` for a unary call, its retries included; ``stream_timeout_s``
  for a whole stream);
* bounded retries on UNAVAILABLE with exponential backoff and jitter (:class:`RetryPolicy`), within the
  call's deadline, then :class:`ServerUnavailable` naming the address and what to check; every other
  refusal raises :class:`~privsplit.proto.status.ProtocolError` with the server's status code and message;
* replicas: ``target`` may list several (``IP:PORT,IP:PORT``) or be a ``dns:///NAME:PORT``; gRPC's
  ``round_robin`` policy spreads the calls, and a call that fails with UNAVAILABLE on a replica that died
  is retried (the retry is picked from the replicas still connected). Each call returns at most one reply:
  a retry is made only after the previous attempt failed without a reply, and inference is a pure function
  of the request (the same features give the same label on any replica, probabilities to float rounding),
  so a request the dead replica had already run is answered once, by the retry;
* streaming (``ModelStreamInfer``) for camera-rate input: requests flow while replies come back in
  order; if the connection drops, the unanswered requests are re-sent on a new stream (same retry
  budget); every request yields a reply or an explicit error.

The channel (target validation, TLS, token, keepalive) comes from :mod:`privsplit.proto.channel`; calls
go through the generated stub. gRPC's own retries are switched off so the retry budget here is the only
one. :meth:`EdgeClient.check` asks the server once (ServerReady, within the call deadline and the retry
budget) so a batch of inputs can stop at the first sign of an unreachable server.
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
from privsplit.proto import channel as dialing
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.messages import InferResponse, ModelMetadata
from privsplit.proto.status import Code, ProtocolError
from privsplit.proto.wire import DEFAULT_MODEL_NAME, Prediction

AUTH_HEADER = dialing.AUTH_HEADER


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

    def channel_tls(self) -> dialing.ChannelTls:
        """The PEM files read (ConfigError naming the flag of a file that cannot be read, or a cert without its key)."""
        return dialing.ChannelTls.from_files(self.ca, self.cert, self.key, server_name=self.server_name)


@dataclass(frozen=True)
class ClientConfig:
    target: str  # HOST:PORT, IP:PORT,IP:PORT,... (replicas, round_robin) or dns:///NAME:PORT
    tls: ClientTls | None = None
    token: str | None = None
    timeout_s: float = 10.0  # deadline of a unary call, all its retries included
    stream_timeout_s: float = 3600.0  # deadline of one ModelStreamInfer stream
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    model_name: str = DEFAULT_MODEL_NAME
    max_message_bytes: int = 16 * 1024 * 1024
    seed: int | None = None  # of the backoff jitter (None: OS entropy)
    insecure: bool = False  # allow the bearer token over plaintext to a non-loopback server (--insecure)
    keepalive: dialing.Keepalive = field(default_factory=dialing.Keepalive)

    def __post_init__(self) -> None:
        target = dialing.parse_target(self.target)
        if not self.timeout_s > 0 or not self.stream_timeout_s > 0:
            raise ConfigError("deadlines must be > 0 s")
        dialing.check_token_transport(target, token=self.token, tls=self.tls is not None, insecure=self.insecure)

    def dial_config(self) -> dialing.DialConfig:
        # reconnect as soon as our own backoff asks (gRPC's default waits 1 s after a failed connect);
        # grpc.min_reconnect_backoff_ms stays default: it is the connect timeout, and slow links need it
        backoff_ms = max(1, int(self.retry.initial_backoff_s * 1000))
        return dialing.DialConfig(
            target=self.target,
            tls=None if self.tls is None else self.tls.channel_tls(),
            token=self.token,
            insecure=self.insecure,
            max_message_bytes=self.max_message_bytes,
            keepalive=self.keepalive,
            retry=None,
            reconnect_backoff_ms=(backoff_ms, max(backoff_ms, int(self.retry.max_backoff_s * 1000))),
        )


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


class EdgeClient:
    """A channel to one server (or to replicas, balanced). Use as a context manager, or call :meth:`close`."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._dial = config.dial_config()
        self._channel = dialing.dial(self._dial)
        self._metadata = self._dial.metadata
        stub = dialing.stub(self._channel, raw=True)  # requests are serialised once, by the caller
        self._infer, self._ready, self._stream = stub.ModelInfer, stub.ServerReady, stub.ModelStreamInfer
        self._model_ready, self._metadata_call = stub.ModelReady, stub.ModelMetadata
        self.retries = 0  # UNAVAILABLE retries made so far (all calls)

    # ---- unary calls with retries ------------------------------------------------------------------
    def _unavailable(self, attempts: int, started: float, exc: grpc.RpcError | None) -> ServerUnavailable:
        if exc is not None:
            error = dialing.rpc_error(exc, self.config.target)
            if str(error).startswith("TLS handshake"):
                return ServerUnavailable(str(error))
        what = "" if exc is None else f" ({dialing.rpc_error(exc, self.config.target)})"
        if exc is not None and self.config.tls is None and "socket closed" in str(what).lower():
            what += "; if the server uses TLS, pass --tls-ca"
        return ServerUnavailable(
            f"cannot reach the server at {self.config.target} after {attempts} attempt(s) in "
            f"{time.monotonic() - started:.1f} s{what}: check --server and that `privsplit serve` runs there"
        )

    def _call(self, method, payload: bytes):
        """One unary call: at most ``retry.attempts`` attempts, all within ``timeout_s`` of the start."""
        started = time.monotonic()
        deadline = started + self.config.timeout_s
        policy = self.config.retry
        for attempt in range(policy.attempts):
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                return method(payload, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = _code(exc)
                if code is not Code.UNAVAILABLE:
                    raise dialing.rpc_error(exc, self.config.target, timeout_s=self.config.timeout_s) from None
                if attempt + 1 == policy.attempts or dialing.is_handshake_failure(exc.details() or ""):
                    raise self._unavailable(attempt + 1, started, exc) from None
                pause = policy.delay(attempt, self._rng)
                if time.monotonic() + pause >= deadline:  # no time left for another attempt
                    raise self._unavailable(attempt + 1, started, exc) from None
                self.retries += 1
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def infer_response(self, payload: bytes) -> InferResponse:
        """Send one serialised ``ModelInferRequest``; return the one reply (its ``id`` echoes the request's)."""
        return InferResponse.from_proto(self._call(self._infer, payload))

    def infer_payload(self, payload: bytes) -> Prediction:
        """Send one serialised ``ModelInferRequest``; return its prediction."""
        return Prediction.from_response(self.infer_response(payload))

    def infer(self, request) -> Prediction:
        """Send an :class:`~privsplit.proto.messages.InferRequest`.

        See :func:`privsplit.proto.wire.features_request`.
        """
        return self.infer_payload(request.to_proto().SerializeToString())

    def check(self) -> None:
        """Ask the server once (ServerReady within the deadline and the retry budget): raises
        :class:`ServerUnavailable` (unreachable), a DEADLINE_EXCEEDED :class:`ProtocolError` (silent) or the
        refusal; returns when the server answered (ready or not: not-ready requests get their own error)."""
        self._call(self._ready, pb.ServerReadyRequest().SerializeToString())

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

        Delivery is at-least-once: a request the server received but whose reply was lost with the
        stream is sent again (the server may process it twice); the caller gets exactly one reply per
        request id, never two.
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
            call = self._stream(
                outgoing(backlog, state["generation"]), timeout=self.config.stream_timeout_s, metadata=self._metadata
            )
            try:
                for msg in call:
                    with lock:
                        if not pending:
                            raise ProtocolError(Code.INTERNAL, "the server replied to a request that was not sent")
                        rid = next(iter(pending))
                        got = msg.infer_response.id if msg.HasField("infer_response") else ""
                        if got and got != rid:
                            raise ProtocolError(
                                Code.INTERNAL,
                                f"reply for {got!r} arrived while {rid!r} was the oldest unanswered request",
                            )
                        del pending[rid]
                    failures = 0
                    if msg.error_message:
                        code, error_text = dialing.stream_error(msg.error_message)
                        yield StreamReply(request_id=rid, error=error_text, code=code)
                    else:
                        yield StreamReply(
                            request_id=rid,
                            prediction=Prediction.from_response(InferResponse.from_proto(msg.infer_response)),
                        )
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
                    error: ProtocolError = self._unavailable(
                        failures, started, exc if isinstance(exc, grpc.RpcError) else None
                    )
                elif code is Code.DEADLINE_EXCEEDED:
                    error = ProtocolError(
                        code,
                        f"the stream to {self.config.target} passed its {self.config.stream_timeout_s:g} s deadline",
                    )
                else:
                    error = dialing.rpc_error(exc, self.config.target, what="the stream")
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
