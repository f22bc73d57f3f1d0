"""`privsplit serve --health-port`: grpc.health.v1 alone, in plaintext, beside a TLS + token server.

Kubernetes' native grpc probe cannot speak TLS (deploy/k8s/deployment.yaml probes this port)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_cloud_support import make_certs

from privsplit.cloud import ServeConfig, TlsConfig, create_server
from privsplit.errors import ConfigError
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # the session's bundles: training + export (~1 min)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_port_reports_the_tls_servers_state_in_plaintext_and_carries_no_inference(bundles, tmp_path):
    certs = make_certs(tmp_path / "certs")
    config = ServeConfig(
        bundle=bundles.cloud_plain,
        port=0,
        health_port=0,
        tls=TlsConfig(cert=certs.server_cert, key=certs.server_key),
        token="probe-test-token",
    )
    srv, port = create_server(config)
    assert srv.health_port and srv.health_port != port
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.health_port}")
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as early:  # bound, not started: nothing answers yet
        health.Check(health_pb2.HealthCheckRequest(), timeout=1)
    assert early.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    srv.start()
    try:
        for service in ("", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == SERVING
        # no inference on the probe port, and the TLS port refuses plaintext
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # drain: the probe port says NOT_SERVING from the moment the main server stops taking requests
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == SERVING
        srv.state.set_ready(False)
        srv._health.enter_graceful_shutdown()  # what stop() does first
        assert next(watch).status == NOT_SERVING
    finally:
        srv.stop(grace=1.0)
        channel.close()


def test_health_port_is_validated():
    with pytest.raises(ConfigError, match="--health-port must be in"):
        ServeConfig(bundle="x", health_port=70000)
