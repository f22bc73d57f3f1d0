"""``privsplit serve``: the cloud backend (Open Inference Protocol over gRPC) for a cloud bundle."""

from __future__ import annotations

import argparse
import enum
import importlib.util
from pathlib import Path

from privsplit.cli._common import non_negative_float, positive_int


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def _stream_pace(text: str) -> float | None:
    """Messages per second, or ``off`` (None)."""
    if text.strip().lower() == "off":
        return None
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0 (messages/s) or 'off'") from None


class Engine(enum.Enum):
    """The server around the bundle: privsplit's own (default) or KServe's ModelServer (the kserve extra)."""

    PRIVSPLIT = "privsplit"
    KSERVE = "kserve"


def _engine(text: str) -> Engine:
    try:
        return Engine(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an engine; choose {', '.join(e.value for e in Engine)}"
        ) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 65535] (0 picks a free port)")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a cloud bundle over gRPC (Open Inference Protocol; Triton/KServe clients work)",
        description="Host the server layers and purifier of a cloud bundle (OUT/cloud from `privsplit export`) "
        "with onnxruntime behind the Open Inference Protocol v2 gRPC API (ServerLive/Ready, ModelReady, "
        "ServerMetadata, ModelMetadata, ModelInfer, ModelStreamInfer), grpc.health.v1 and reflection, with "
        "dynamic batching. Logs the bound address; on SIGTERM/SIGINT it stops taking requests, finishes the "
        "ones in flight and exits 0.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="cloud bundle folder (OUT/cloud)")
    p.add_argument(
        "--model-name", default="privsplit", metavar="NAME", help="model name clients ask for (default %(default)s)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="H",
        help="address to listen on (default %(default)s; 0.0.0.0 or :: for all)",
    )
    p.add_argument(
        "--port", type=_port, default=8001, metavar="P", help="gRPC port (default %(default)s; 0 picks a free one)"
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=64,
        metavar="N",
        help="max rows per model run; 1 turns batching off (default %(default)s)",
    )
    p.add_argument(
        "--max-delay-ms",
        type=non_negative_float,
        default=1.0,
        metavar="F",
        help="wait up to F ms for a fuller batch while more requests are arriving; "
        "a lone request never waits (default %(default)s; 0 = never)",
    )
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=1024,
        metavar="N",
        help="requests that may wait; when full, the caller holding the most of them is refused with "
        "RESOURCE_EXHAUSTED (default %(default)s)",
    )
    p.add_argument(
        "--queue-timeout-ms",
        type=non_negative_float,
        default=5000.0,
        metavar="F",
        help="refuse (UNAVAILABLE) requests queued longer than this (default %(default)s)",
    )
    p.add_argument(
        "--max-request-batch",
        type=positive_int,
        default=256,
        metavar="N",
        help="max rows in one request (default %(default)s)",
    )
    p.add_argument(
        "--max-message-mb",
        type=non_negative_float,
        default=16.0,
        metavar="MB",
        help="max gRPC message size (default %(default)s MiB)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="onnxruntime intra-op threads (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT) so N cores are used despite the GIL; the "
        "command supervises them: signals are forwarded, a worker that dies is restarted; health is per "
        "worker (--health-port P: worker K on P+K); --metrics-port serves the sum over all workers "
        "(default %(default)s)",
    )
    p.add_argument(
        "--rpc-threads",
        type=positive_int,
        default=128,
        metavar="N",
        help="gRPC threads per process = RPCs handled at once; each open stream holds one (default %(default)s)",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=positive_int,
        metavar="N",
        help="RPCs in flight at once per process (open streams count); more are refused with RESOURCE_EXHAUSTED "
        "(default: --rpc-threads)",
    )
    p.add_argument(
        "--tls-cert", type=Path, metavar="F", help="server certificate chain (PEM); with --tls-key turns TLS on"
    )
    p.add_argument("--tls-key", type=Path, metavar="F", help="server private key (PEM)")
    p.add_argument(
        "--client-ca", type=Path, metavar="F", help="CA (PEM) client certificates must be signed by: mutual TLS"
    )
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="F",
        help="file holding the bearer token clients must send as 'authorization: Bearer <token>'",
    )
    p.add_argument(
        "--device-tokens",
        type=Path,
        metavar="F",
        help="per-device tokens: lines 'DEVICE-ID SHA256-OF-TOKEN' (no secrets; `privsplit devices add` writes "
        "them); re-read while serving, so removing a line (`privsplit devices revoke`) refuses that device "
        "within about 1 s, no restart; may be combined with --token-file",
    )
    p.add_argument(
        "--rate-limit",
        type=positive_float,
        metavar="R",
        help="at most R requests/s per caller (device id, else client certificate name, else IP address; each "
        "stream message counts): more calls get RESOURCE_EXHAUSTED, a faster stream is read at R/s (default: no "
        "limit)",
    )
    p.add_argument(
        "--rate-burst",
        type=positive_int,
        metavar="B",
        help="with --rate-limit: requests a caller may send at once (default: 2 x R, at least 1)",
    )
    p.add_argument(
        "--stream-window",
        type=positive_int,
        default=64,
        metavar="N",
        help="read at most N requests of a stream ahead of its replies, then stop reading it (backpressure: a "
        "client that never reads cannot grow server memory) (default %(default)s)",
    )
    p.add_argument(
        "--stream-pace",
        type=_stream_pace,
        default=60.0,
        metavar="R",
        help="while other callers use the server, read each stream (a device, else a connection) at most R "
        "messages/s, R at once; a stream alone is never paced, a camera (30-60 frames/s) is never slowed; 'off': "
        "read as fast as it comes (a flood then takes the server's CPU from the others) (default %(default)g)",
    )
    p.add_argument(
        "--reply-load",
        action="store_true",
        help="put queue_us and batch_size in every reply (they reveal other tenants' load; off by default, "
        "compute_us is always sent)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow --token-file without TLS on a non-loopback --host (refused by default: tokens "
        "would travel in plaintext)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        metavar="P",
        help="serve Prometheus metrics on http://HOST:P/metrics (0 picks a free port)",
    )
    p.add_argument(
        "--health-port",
        type=_port,
        metavar="P",
        help="also serve grpc.health.v1 alone, in plaintext, on HOST:P (for Kubernetes' grpc probe, which "
        "cannot speak TLS; no inference there; 0 picks a free port)",
    )
    p.add_argument(
        "--trust-key",
        type=Path,
        metavar="PUB",
        help="refuse the bundle unless signed by this Ed25519 public key (PREFIX.pub)",
    )
    p.add_argument(
        "--grace",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, let in-flight requests finish for up to S s (default %(default)s)",
    )
    p.add_argument(
        "--engine",
        type=_engine,
        default=Engine.PRIVSPLIT,
        metavar="E",
        help="privsplit (default): the own server; kserve: the bundle in KServe's ModelServer (gRPC on --port, "
        "REST on --http-port; needs the kserve extra in its own environment, see README 'Deploying at scale'; "
        "no batching, TLS, token or metrics flags)",
    )
    p.add_argument(
        "--http-port",
        type=_port,
        default=8080,
        metavar="P",
        help="with --engine kserve: KServe's REST port (default %(default)s; 0 picks a free one)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="server log on stderr: text lines, or one JSON object per line for a log collector (default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="least severe server log lines shown (default %(default)s)",
    )
    p.set_defaults(handler=run)


def build_config(args: argparse.Namespace):
    from privsplit.cloud.config import BatchConfig, RateLimit, ServeConfig, StreamPace, TlsConfig
    from privsplit.errors import ConfigError
    from privsplit.proto.channel import read_token

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.client_ca is not None and args.tls_cert is None:
        raise ConfigError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if args.rate_burst is not None and args.rate_limit is None:
        raise ConfigError("--rate-burst needs --rate-limit (requests per second per caller)")
    rate = (
        None
        if args.rate_limit is None
        else RateLimit(
            rate=args.rate_limit,
            burst=args.rate_burst if args.rate_burst is not None else max(1, round(2 * args.rate_limit)),
        )
    )
    tls = None if args.tls_cert is None else TlsConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.client_ca)
    batch = BatchConfig(
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        queue_timeout_ms=args.queue_timeout_ms,
        max_request_batch=args.max_request_batch,
    )
    return ServeConfig(
        bundle=args.bundle,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        batch=batch,
        tls=tls,
        token=None if args.token_file is None else read_token(args.token_file),
        device_tokens=args.device_tokens,
        rate_limit=rate,
        stream_window=args.stream_window,
        stream_pace=None
        if args.stream_pace is None
        else StreamPace(rate=args.stream_pace, burst=max(1, round(args.stream_pace))),
        reply_load=args.reply_load,
        trust_key=args.trust_key,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        threads=args.threads,
        rpc_threads=args.rpc_threads,
        workers=args.workers,
        grace_s=args.grace,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        insecure=args.insecure,
    )


# Flags of the own server that KServe's ModelServer cannot honour: refused with --engine kserve, never ignored.
_NOT_WITH_KSERVE = {
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "client_ca": "--client-ca",
    "token_file": "--token-file",
    "device_tokens": "--device-tokens",
    "rate_limit": "--rate-limit",
    "rate_burst": "--rate-burst",
    "metrics_port": "--metrics-port",
    "health_port": "--health-port",
    "max_concurrent_rpcs": "--max-concurrent-rpcs",
}


# Options of the own server's batching and threading that KServe's ModelServer has no equivalent for: refused
# with --engine kserve when set to anything but their default.
_OWN_SERVER_ONLY = {
    "max_batch": "--max-batch",
    "max_delay_ms": "--max-delay-ms",
    "max_queue": "--max-queue",
    "queue_timeout_ms": "--queue-timeout-ms",
    "max_message_mb": "--max-message-mb",
    "workers": "--workers",
    "rpc_threads": "--rpc-threads",
    "insecure": "--insecure",
    "stream_window": "--stream-window",
    "stream_pace": "--stream-pace",
    "reply_load": "--reply-load",
}


def build_kserve_config(args: argparse.Namespace):
    from privsplit.cloud.kserve_model import KServeConfig
    from privsplit.errors import ConfigError

    for attr, flag in _NOT_WITH_KSERVE.items():
        if getattr(args, attr) is not None:
            raise ConfigError(
                f"{flag} does not apply to --engine kserve: KServe's ModelServer has no TLS, token or metrics "
                "options of ours (the platform in front provides them); drop it or use the default engine"
            )
    subparsers = argparse.ArgumentParser(add_help=False).add_subparsers()
    register(subparsers)
    defaults = subparsers.choices["serve"]
    for attr, flag in _OWN_SERVER_ONLY.items():
        if getattr(args, attr) != defaults.get_default(attr):
            raise ConfigError(
                f"{flag} does not apply to --engine kserve: KServe's ModelServer runs each request on its own "
                "(no batching, queue or worker options of ours); drop it or use the default engine"
            )
    return KServeConfig(
        bundle=args.bundle,
        model_name=args.model_name,
        grpc_port=args.port,
        http_port=args.http_port,
        trust_key=args.trust_key,
        threads=args.threads,
        max_request_batch=args.max_request_batch,
        grace_s=args.grace,
    )


def run(args: argparse.Namespace) -> int:
    from privsplit.cloud.logs import setup_logging

    setup_logging(args.log_format, args.log_level)
    if args.engine is Engine.KSERVE:
        from privsplit.errors import MissingDependencyError

        config = build_kserve_config(args)
        from privsplit.cloud.kserve_model import INSTALL_HINT, serve_kserve

        if importlib.util.find_spec("kserve") is None:
            raise MissingDependencyError(INSTALL_HINT)
        return serve_kserve(config)
    config = build_config(args)
    from privsplit.cloud.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before any server thread starts: see privsplit.cloud.memory
    if config.workers > 1:
        from privsplit.cloud.workers import supervise

        return supervise(config)
    from privsplit.cloud.server import serve

    return serve(config)
