"""Assembling, running and draining the cloud server.

* :func:`create_server` -> ``(CloudServer, port)``: bound (port 0 picks a free one), not started.
* :meth:`CloudServer.stop` drains: readiness and health go NOT_SERVING, calls that already reached the
  server are still accepted (:mod:`privsplit.cloud.drain`), then new RPCs are refused; in-flight ones
  (and every queued request) finish within the grace period.
* :func:`serve` runs until SIGTERM / SIGINT, drains, returns 0 (``privsplit serve``).

Services: ``inference.GRPCInferenceService`` (Open Inference Protocol), ``grpc.health.v1.Health`` and
server reflection; optional TLS / mutual TLS, bearer-token auth (a shared token and/or per-device tokens
re-read while serving), a per-caller rate limit, max message size, Prometheus text endpoint. The
synchronous gRPC server is used on purpose: measured here it costs about half the CPU per request of
grpc.aio, and the model thread batches across its worker threads.
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from privsplit.cloud.auth import BearerTokenInterceptor, server_credentials
from privsplit.cloud.batcher import DynamicBatcher
from privsplit.cloud.config import ServeConfig
from privsplit.cloud.devices import DeviceTokens
from privsplit.cloud.drain import QUIET_S, WINDOW_MAX_S, ArrivalCounter
from privsplit.cloud.health_port import HealthListener
from privsplit.cloud.metrics import Metrics
from privsplit.cloud.model_host import ModelHost
from privsplit.cloud.pacing import StreamPacer
from privsplit.cloud.ratelimit import RateLimiter
from privsplit.cloud.rpc_pool import DaemonThreadPool
from privsplit.cloud.servicer import SERVICE_NAME, InferenceServicer, ServingState, add_to_server
from privsplit.errors import ConfigError
from privsplit.proto.channel import server_keepalive_options

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class CloudServer:
    """A bound gRPC server for one cloud bundle. ``start()``, ``stop(grace)``; a context manager."""

    def __init__(self, config: ServeConfig, *, host: ModelHost | None = None) -> None:
        self.config = config
        self.host = (
            host
            if host is not None
            else ModelHost.open(
                config.bundle, name=config.model_name, trust_key=config.trust_key, threads=config.threads
            )
        )
        self.metrics = Metrics(model=self.host.spec.name, version=self.host.spec.version)
        self.state = ServingState(self.metrics)
        self.batcher = DynamicBatcher(
            self.host.infer,
            config.batch,
            on_batch=lambda rows, us: self.metrics.batch(rows=rows, compute_us=us),
            on_depth=self.metrics.queue_depth,
        )
        self._arrivals = ArrivalCounter()
        interceptors: list[grpc.ServerInterceptor] = [self._arrivals]
        self.devices = None if config.device_tokens is None else DeviceTokens(config.device_tokens)
        if config.token is not None or self.devices is not None:
            interceptors.append(
                BearerTokenInterceptor(
                    config.token, devices=self.devices, on_refuse=lambda: self.metrics.failure("UNAUTHENTICATED")
                )
            )
        # daemon threads: an RPC thread still blocked after stop() cannot hold the process open
        self._pool = DaemonThreadPool(config.rpc_threads, thread_name_prefix="privsplit-rpc")
        limit = config.rpc_limit  # beyond it gRPC answers RESOURCE_EXHAUSTED at once instead of queueing
        self._server = grpc.server(
            self._pool,
            interceptors=interceptors,
            maximum_concurrent_rpcs=limit,
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 1 if config.reuse_port else 0),  # 0: a second server gets "port in use"
                *server_keepalive_options(),
            ],
        )
        self.servicer = servicer = InferenceServicer(
            spec=self.host.spec,
            batcher=self.batcher,
            limits=config.batch,
            metrics=self.metrics,
            state=self.state,
            devices=self.devices,
            limiter=None if config.rate_limit is None else RateLimiter(config.rate_limit),
            stream_window=config.stream_window,
            pacer=None if config.stream_pace is None else StreamPacer(config.stream_pace),
            reply_load=config.reply_load,
        )
        add_to_server(servicer, self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), self._server)
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            if config.tls is None:
                port = self._server.add_insecure_port(config.address)
            else:
                port = self._server.add_secure_port(config.address, server_credentials(config.tls))
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen on {config.address}: {exc} (port in use, or a bad --host / TLS file)"
            ) from None
        if not port:
            raise ConfigError(f"cannot listen on {config.address}: port in use, or a bad --host / TLS file")
        self.port = port
        self._health_listener = (
            None
            if config.health_port is None
            else HealthListener(self._health, host=config.host, port=config.health_port)
        )
        self.health_port = None if self._health_listener is None else self._health_listener.port
        self.metrics_port: int | None = None
        self._http = None
        self._started = False
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def spec(self):
        return self.host.spec

    @property
    def ready(self) -> bool:
        return self.state.ready

    def start(self) -> CloudServer:
        if self.config.metrics_port is not None:
            self._http, self.metrics_port = self.metrics.serve_http(self.config.host, self.config.metrics_port)
        self.batcher.start()
        self._server.start()
        if self._health_listener is not None:
            self._health_listener.start()
        self._started = True
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.state.set_ready(True)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, let in-flight and queued requests finish (up to ``grace`` s)."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.config.grace_s if grace is None else grace
            deadline = time.monotonic() + grace
            self.state.set_ready(False)
            self._health.enter_graceful_shutdown()
            # accept what already reached the server (gRPC's stop would cancel it), then refuse new calls
            self._arrivals.wait_quiet(limit_s=min(grace, WINDOW_MAX_S) if grace > QUIET_S else 0.0)
            self._server.stop(max(deadline - time.monotonic(), 0.0)).wait()
            if self._health_listener is not None:
                self._health_listener.stop(0)
            self.batcher.close(timeout=max(grace, 1.0))
            self._pool.shutdown(wait=False)
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
            self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` finished (True) or ``timeout`` passed (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> CloudServer:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(grace=1.0)


def create_server(config: ServeConfig, *, host: ModelHost | None = None) -> tuple[CloudServer, int]:
    """Load the bundle (unless ``host`` is given), build and bind the server; not started."""
    server = CloudServer(config, host=host)
    return server, server.port


def serve(config: ServeConfig, *, log=None, on_ready=None) -> int:
    """Serve until SIGTERM / SIGINT, then drain and return 0. Logs the bound address to stderr;
    ``on_ready(server)`` is called once it serves (a worker process reports to its supervisor there).
    ``config.workers`` is ignored here: :func:`privsplit.cloud.workers.supervise` runs several."""
    from privsplit.cloud.logs import logger

    log = log or logger.info
    server, port = create_server(config)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        spec, batch, tls = server.spec, config.batch, config.tls
        auth = [
            *(["shared token"] if config.token else []),
            *([f"{len(server.devices.devices)} device tokens"] if server.devices is not None else []),
        ]
        security = ("mutual TLS" if tls and tls.client_ca else "TLS" if tls else "plaintext") + (
            f", auth by {' and '.join(auth)}" if auth else ", no auth"
        )
        if config.rate_limit is not None:
            security += f", {config.rate_limit.rate:g} requests/s per caller (burst {config.rate_limit.burst})"
        if config.stream_pace is not None:
            security += f", streams paced to {config.stream_pace.rate:g} messages/s while shared"
        security += f", at most {config.rpc_limit} RPCs at once"
        log(
            f"listening on {config.host}:{port} ({security}); model {spec.name!r} version {spec.version!r}, "
            f"{spec.num_classes} classes, purifier {'on' if spec.purifier else 'off'}; batching "
            + (f"max {batch.max_batch} rows / {batch.max_delay_ms:g} ms" if batch.enabled else "off")
        )
        if server.health_port is not None:
            log(f"health checks (grpc.health.v1, plaintext) on {config.host}:{server.health_port}")
        if server.metrics_port is not None:
            log(f"metrics on http://{config.host}:{server.metrics_port}/metrics")
        if on_ready is not None:
            on_ready(server)
        while not stop.wait(0.5):
            pass
        log(f"{received[0]}: draining (up to {config.grace_s:g} s for in-flight requests)")
        server.stop()
        log("drained; bye")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not server.wait(0):
            server.stop(grace=0)
