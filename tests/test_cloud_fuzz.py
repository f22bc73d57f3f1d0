"""Property-based fuzz of malformed requests: every one gets a deliberate status (never UNKNOWN, never a
crash), valid ones are answered, and the server keeps serving throughout."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
DATATYPES = ["INT8", "UINT8", "FP16", "FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES", "BF16", "", "int8", "FLOAT"]


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


def _param(draw):
    return draw(
        st.one_of(
            st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
            st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
            st.builds(lambda v: pb.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
            st.builds(lambda v: pb.InferParameter(double_param=v), st.floats()),
            st.builds(lambda v: pb.InferParameter(string_param=v), st.text(max_size=70)),
            st.just(pb.InferParameter()),  # no value set
        )
    )


@st.composite
def requests(draw, spec_version: str, good_hash: str):
    msg = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["privsplit", "privsplit", "", "other"])),
        model_version=draw(st.sampled_from(["", "", spec_version, "1"])),
        id=draw(st.text(max_size=6)),
    )
    n_inputs = draw(st.integers(0, 2))
    use_raw = draw(st.booleans())
    for _ in range(n_inputs):
        t = msg.inputs.add(
            name=draw(st.sampled_from(["features", "features", "image", ""])), datatype=draw(st.sampled_from(DATATYPES))
        )
        shape = draw(
            st.one_of(st.just([draw(st.integers(-1, 3)), 32, 8, 8]), st.lists(st.integers(-2, 40), max_size=5))
        )
        t.shape.extend(shape)
        for key in draw(
            st.lists(st.sampled_from(["scale", "zero_point", "encoder_hash", "x"]), max_size=3, unique=True)
        ):
            t.parameters[key].CopyFrom(_param(draw))
        if use_raw:
            size = draw(st.sampled_from(["exact", "random"]))
            count = int(np.prod([max(d, 0) for d in shape])) if shape else 1
            itemsize = {"INT8": 1, "UINT8": 1, "BOOL": 1, "FP16": 2, "FP32": 4, "INT32": 4, "FP64": 8, "INT64": 8}.get(
                t.datatype, 1
            )
            length = count * itemsize if size == "exact" and count * itemsize < 200_000 else draw(st.integers(0, 3000))
            msg.raw_input_contents.append(
                draw(st.binary(min_size=length, max_size=length)) if length < 5000 else bytes(length)
            )
        elif draw(st.booleans()):
            field = draw(
                st.sampled_from(["int_contents", "uint_contents", "fp32_contents", "int64_contents", "bool_contents"])
            )
            values = {
                "int_contents": st.integers(-(2**31), 2**31 - 1),
                "uint_contents": st.integers(0, 2**32 - 1),
                "fp32_contents": st.floats(width=32),
                "int64_contents": st.integers(-(2**63), 2**63 - 1),
                "bool_contents": st.booleans(),
            }[field]
            getattr(t.contents, field).extend(draw(st.lists(values, max_size=40)))
    if use_raw and draw(st.booleans()):
        msg.raw_input_contents.append(b"\x00")  # one too many
    hash_choice = draw(st.sampled_from(["good", "good", "bad", "missing", "typed"]))
    if hash_choice == "good":
        msg.parameters["encoder_hash"].string_param = good_hash
    elif hash_choice == "bad":
        msg.parameters["encoder_hash"].string_param = draw(st.text(max_size=64))
    elif hash_choice == "typed":
        msg.parameters["encoder_hash"].CopyFrom(_param(draw))
    for key in draw(st.lists(st.sampled_from(["scale", "zero_point", "label_only", "other"]), max_size=3, unique=True)):
        msg.parameters[key].CopyFrom(_param(draw))
    for name in draw(st.lists(st.sampled_from(["probs", "label", "logits", ""]), max_size=3)):
        msg.outputs.add(name=name)
    return msg


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
