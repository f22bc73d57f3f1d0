"""A plaintext listener that serves only ``grpc.health.v1.Health`` (``privsplit serve --health-port``).

Kubernetes' native ``grpc:`` probe connects without TLS (a TLS mode exists only from 1.37, behind a feature
gate), so a server that runs with ``--tls-cert`` cannot be probed on its own port. This second gRPC server
shares the main server's :class:`~grpc_health.v1.health.HealthServicer`, so it reports exactly what the main
port reports (SERVING once started, NOT_SERVING while draining); it carries no inference, so neither features
nor bearer tokens ever travel on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from privsplit.errors import ConfigError


class HealthListener:
    """Bound on ``host:port`` (0 picks a free one) at construction; :meth:`start`, :meth:`stop`."""

    def __init__(self, servicer: health.HealthServicer, *, host: str, port: int) -> None:
        self._server = grpc.server(ThreadPoolExecutor(max_workers=2, thread_name_prefix="privsplit-health"))
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self._server)
        address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for health checks on {address}: {exc} (port in use?)") from None
        if not bound:
            raise ConfigError(f"cannot listen for health checks on {address}: port in use, or a bad --host")
        self.port = bound

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float) -> None:
        self._server.stop(grace).wait()
