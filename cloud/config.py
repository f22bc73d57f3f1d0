"""What a cloud server is started with: frozen, validated, keyword-only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from privsplit.errors import ConfigError
from privsplit.proto.channel import is_loopback, read_pem
from privsplit.proto.wire import DEFAULT_MODEL_NAME

DEFAULT_PORT = 8001  # Triton's gRPC port
MAX_WORKERS = 64  # server processes of one `privsplit serve --workers N`


@dataclass(frozen=True)
class BatchConfig:
    """Dynamic batching. ``max_batch`` rows per model run (1 = batching off). When the model is free it
    runs what is queued, waiting up to ``max_delay_ms`` for a fuller batch only while more requests are
    already being received (a lone request never waits; 0 = never wait). At most ``max_queue``
    requests wait (more: RESOURCE_EXHAUSTED) and none longer than ``queue_timeout_ms`` (else:
    UNAVAILABLE). One request carries at most ``max_request_batch`` rows."""

    max_batch: int = 64
    max_delay_ms: float = 1.0
    max_queue: int = 1024
    queue_timeout_ms: float = 5000.0
    max_request_batch: int = 256

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_request_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_delay_ms", "queue_timeout_ms"):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.queue_timeout_ms == 0:
            raise ConfigError("queue_timeout_ms must be > 0 (it bounds how long a request may wait)")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1


@dataclass(frozen=True)
class RateLimit:
    """``rate`` requests per second per caller identity on average, ``burst`` at once
    (:mod:`privsplit.cloud.ratelimit`)."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.rate == float("inf"):
            raise ConfigError(f"--rate-limit must be a finite number > 0 (requests per second), got {self.rate}")
        if self.burst < 1:
            raise ConfigError(f"--rate-burst must be >= 1, got {self.burst}")


@dataclass(frozen=True)
class StreamPace:
    """While other callers use the server, each stream flow is read at most ``rate`` messages a second on
    average, ``burst`` at once (:mod:`privsplit.cloud.pacing`)."""

    rate: float = 60.0  # a camera-class device's highest frame rate (one request per frame): it is never paced
    burst: int = 60

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.rate == float("inf"):
            raise ConfigError(
                f"--stream-pace must be a finite number > 0 (messages per second) or 'off', got {self.rate}"
            )
        if self.burst < 1:
            raise ConfigError(f"the stream pace's burst must be >= 1, got {self.burst}")


DEFAULT_STREAM_PACE = StreamPace()


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate chain and key (PEM); with ``client_ca``, clients must present a certificate
    signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        return (
            read_pem(self.cert, "--tls-cert"),
            read_pem(self.key, "--tls-key"),
            read_pem(self.client_ca, "--client-ca"),
        )


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``privsplit serve`` takes. ``token``: the shared bearer token clients must send;
    ``device_tokens``: a file of per-device token digests re-read while serving (either or both; neither: no
    auth). ``rate_limit``: per caller identity. ``stream_window``: requests of one stream read ahead of its
    replies (then the server stops reading it: backpressure). ``stream_pace``: how fast a stream is read while
    others use the server (None: as fast as it comes). ``reply_load``: put ``queue_us`` and
    ``batch_size`` (other tenants' load) in every reply."""

    bundle: Path
    model_name: str = DEFAULT_MODEL_NAME
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    batch: BatchConfig = field(default_factory=BatchConfig)
    tls: TlsConfig | None = None
    token: str | None = None
    device_tokens: Path | None = None
    rate_limit: RateLimit | None = None
    stream_window: int = 64
    stream_pace: StreamPace | None = DEFAULT_STREAM_PACE
    reply_load: bool = False
    trust_key: Path | None = None
    metrics_port: int | None = None
    health_port: int | None = None  # a plaintext grpc.health.v1-only listener for probes (cloud/health_port.py)
    max_message_bytes: int = 16 * 1024 * 1024
    threads: int = 1  # onnxruntime intra-op threads
    rpc_threads: int = 128  # gRPC worker threads: concurrent RPCs being handled (each open stream holds one)
    max_concurrent_rpcs: int | None = None  # more RPCs at once get RESOURCE_EXHAUSTED (None: = rpc_threads)
    grace_s: float = 30.0  # drain: how long in-flight requests may take after SIGTERM
    insecure: bool = False  # allow a bearer token without TLS on a non-loopback address (--insecure)
    workers: int = 1  # server processes sharing the port (SO_REUSEPORT; privsplit.cloud.workers supervises them)
    reuse_port: bool = False  # join other sockets on the port (set for the worker processes; else: port in use)

    def __post_init__(self) -> None:
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(f"--model-name must be a non-empty name without '/', got {self.model_name!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in [0, 65535], got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be in [0, 65535], got {self.metrics_port}")
        if self.health_port is not None and not 0 <= self.health_port <= 65535:
            raise ConfigError(f"--health-port must be in [0, 65535], got {self.health_port}")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max message size must be >= 1024 bytes, got {self.max_message_bytes}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.rpc_threads < 2:
            raise ConfigError(f"--rpc-threads must be >= 2, got {self.rpc_threads}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers (server processes) must be in 1..{MAX_WORKERS}, got {self.workers}")
        if self.grace_s < 0:
            raise ConfigError(f"the drain grace must be >= 0 s, got {self.grace_s}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("the bearer token is empty: put the token in the --token-file")
        if self.max_concurrent_rpcs is not None and not 1 <= self.max_concurrent_rpcs <= self.rpc_threads:
            raise ConfigError(
                f"--max-concurrent-rpcs must be in 1..--rpc-threads ({self.rpc_threads}): each RPC in flight holds "
                f"a thread, got {self.max_concurrent_rpcs}"
            )
        if not 1 <= self.stream_window <= 100_000:
            raise ConfigError(f"--stream-window must be in 1..100000 requests, got {self.stream_window}")
        tokens = self.token is not None or self.device_tokens is not None
        if tokens and self.tls is None and not is_loopback(self.host) and not self.insecure:
            raise ConfigError(
                f"refusing to accept bearer tokens in plaintext on {self.host}: add --tls-cert/--tls-key, listen on "
                "127.0.0.1, or pass --insecure if the network is trusted"
            )

    @property
    def rpc_limit(self) -> int:
        return self.rpc_threads if self.max_concurrent_rpcs is None else self.max_concurrent_rpcs

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"
