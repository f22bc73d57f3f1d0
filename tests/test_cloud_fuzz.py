"""Property-based fuzz of malformed requests: every one gets a deliberate status (never UNKNOWN, never a
crash), valid ones are answered, and the server keeps serving throughout."""

from __future__ import annotations

import time

import grpc
import pytest
from cloud_fuzz_strategies import hostile_requests, requests
from hypothesis import HealthCheck, given, settings
from test_cloud_support import wire_features

from privsplit.cloud import BatchConfig, ServeConfig, create_server
from privsplit.proto import features_request
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def served(bundles, digits_run):
    wire = wire_features(bundles, digits_run, count=4)
    srv, port = create_server(
        ServeConfig(
            bundle=bundles.cloud,
            port=0,
            max_message_bytes=1 << 20,
            batch=BatchConfig(max_batch=8, max_request_batch=16),
        )
    )
    with srv:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield srv, pb_grpc.GRPCInferenceServiceStub(channel), channel, wire
        channel.close()


def test_fuzzed_requests_get_deliberate_statuses(served):
    srv, stub, channel, wire = served
    seen: dict[grpc.StatusCode, int] = {}

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(msg=requests(srv.spec.version, wire.encoder_hash))
    def check(msg):
        details = ""
        try:
            reply = stub.ModelInfer(msg, timeout=30)
            code = grpc.StatusCode.OK
            assert {o.name for o in reply.outputs} <= {"probs", "label"} and reply.outputs
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            assert details, "a refusal must say why"
        assert code in DELIBERATE, f"{code}: {details}"
        seen[code] = seen.get(code, 0) + 1

    check()
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 50
    # garbage that is not even a protobuf message: refused as INVALID_ARGUMENT, the server lives on
    raw = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    for junk in (b"\xff" * 7, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256))):
        with pytest.raises(grpc.RpcError) as err:
            raw(junk, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the request is not a valid ModelInferRequest message" in err.value.details()
    # and the server still serves
    assert stub.ServerLive(pb.ServerLiveRequest()).live and srv.ready
    ok = features_request(
        wire.features[:2], encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point
    )
    assert len(stub.ModelInfer(ok.to_proto(), timeout=30).outputs) == 2
    assert srv.metrics.counter("nv_inference_request_failure", "INTERNAL") == 0


def test_hostile_requests_and_a_stream_that_never_reads(served):
    """Huge and deep shapes, mismatched datatypes and byte counts, parameter / output / id bombs: each gets one
    deliberate refusal (or an answer), never INTERNAL or a hang; a stream that writes and never reads is cut
    off by the client without harm; the server stays ready throughout."""
    srv, stub, channel, wire = served
    seen: dict[grpc.StatusCode, int] = {}
    failures_before = srv.metrics.counter("nv_inference_request_failure", "INTERNAL")

    @settings(
        max_examples=120,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(msg=hostile_requests(srv.spec.version, wire.encoder_hash, srv.spec.feature_shape))
    def check(msg):
        try:
            stub.ModelInfer(msg, timeout=30)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        assert code in DELIBERATE, f"{code}: {details}"  # DEADLINE_EXCEEDED here would be a hang
        seen[code] = seen.get(code, 0) + 1
        assert srv.ready

    check()
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 30
    # found by benchmarks/serve_hardening.py: a zero dimension beside huge ones was INTERNAL (numpy's size check)
    zero = pb.ModelInferRequest(model_name="privsplit")
    zero.inputs.add(name="features", datatype="INT8", shape=[0, 2**30, 2**30, 2**30])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(zero, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more elements than" in err.value.details()
    assert srv.metrics.counter("nv_inference_request_failure", "INTERNAL") == failures_before
    # a stream that writes fast and never reads, then goes away: the server lives on
    ok = features_request(
        wire.features[:1], encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point
    ).to_proto()
    small_window = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]  # unread replies back up
    reader_less = grpc.insecure_channel(f"127.0.0.1:{srv.port}", options=small_window)
    flood = pb_grpc.GRPCInferenceServiceStub(reader_less).ModelStreamInfer(iter([ok] * 5000), timeout=60)
    deadline = time.monotonic() + 60
    while srv.servicer.peak_stream_backlog < srv.config.stream_window:
        assert time.monotonic() < deadline, "the never-reading stream did not fill its window"
        time.sleep(0.05)
    flood.cancel()
    reader_less.close()
    assert srv.servicer.peak_stream_backlog <= srv.config.stream_window + 1
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live and srv.ready
    assert len(stub.ModelInfer(ok, timeout=30).outputs) == 2
