"""Serde of the protocol dataclasses: exact round trips, and decoding errors that name the field."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privsplit.proto import (
    Code,
    Datatype,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelRef,
    Prediction,
    ProtocolError,
    RequestedOutput,
    ServerMetadata,
    StreamInferResponse,
    Tensor,
    TensorMetadata,
    features_request,
)
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.messages import ResponseEncoder

DTYPES = [
    np.bool_,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
]

params_st = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.one_of(st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), st.text(max_size=20)),
    max_size=4,
)


@st.composite
def tensors(draw, name=None):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    data = draw(hnp.arrays(dtype, shape))
    return Tensor(name or draw(st.text(min_size=1, max_size=10)), data, draw(params_st))


def _through_wire(message):
    """Serialise and parse the protobuf, as the transport does."""
    return type(message).FromString(message.SerializeToString())


@settings(max_examples=60, deadline=None)
@given(
    inputs=st.lists(tensors(), min_size=0, max_size=3, unique_by=lambda t: t.name),
    params=params_st,
    outputs=st.lists(st.text(max_size=8), max_size=3),
    model=st.text(max_size=10),
    version=st.text(max_size=5),
    rid=st.text(max_size=8),
)
def test_infer_request_round_trip(inputs, params, outputs, model, version, rid):
    req = InferRequest(
        model_name=model,
        model_version=version,
        id=rid,
        parameters=params,
        inputs=tuple(inputs),
        outputs=tuple(RequestedOutput(o, {"k": 1}) for o in outputs),
    )
    back = InferRequest.from_proto(_through_wire(req.to_proto()))
    assert back == req
    for a, b in zip(back.inputs, req.inputs):
        assert a.data.dtype == b.data.dtype and a.shape == b.shape


@settings(max_examples=40, deadline=None)
@given(outputs=st.lists(tensors(), max_size=3, unique_by=lambda t: t.name), params=params_st)
def test_infer_response_and_stream_round_trip(outputs, params):
    resp = InferResponse(model_name="m", model_version="7", id="x", parameters=params, outputs=tuple(outputs))
    assert InferResponse.from_proto(_through_wire(resp.to_proto())) == resp
    for stream in (StreamInferResponse(response=resp), StreamInferResponse(error_message="INVALID_ARGUMENT: no")):
        assert StreamInferResponse.from_proto(_through_wire(stream.to_proto())) == stream


_ENCODER = ResponseEncoder(max_layouts=8)  # shared by the examples: cached layouts are reused and evicted


@settings(max_examples=60, deadline=None)
@given(
    outputs=st.lists(tensors(), max_size=3, unique_by=lambda t: t.name),
    params=params_st,
    rid=st.text(max_size=8),
    version=st.sampled_from(["", "7"]),
    plain=st.booleans(),
)
def test_response_encoder_parses_to_the_full_serialisation(outputs, params, rid, version, plain):
    if plain:  # the cached-header path (no tensor parameters); otherwise the whole message is serialised
        outputs = [Tensor(t.name, t.data) for t in outputs]
    resp = InferResponse(model_name="m", model_version=version, id=rid, parameters=params, outputs=tuple(outputs))
    for _ in range(2):  # the second reply of a layout uses the cached header
        parsed = pb.ModelInferResponse.FromString(_ENCODER.encode(resp))
        assert parsed == resp.to_proto()
        assert InferResponse.from_proto(parsed) == resp
    stream = pb.ModelStreamInferResponse()  # as the servicer wraps a stream reply
    stream.infer_response.MergeFromString(_ENCODER.encode(resp))
    assert StreamInferResponse.from_proto(_through_wire(stream)) == StreamInferResponse(response=resp)


def test_response_encoder_replies_differ_only_where_the_data_does():
    encoder = ResponseEncoder()
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    first = InferResponse("m", (Tensor("probs", probs), Tensor("label", np.array([1]))), id="a", parameters={"q": 3})
    second = InferResponse("m", (Tensor("probs", probs[:, ::-1]), Tensor("label", np.array([0]))), id="b")
    a, b = (InferResponse.from_proto(pb.ModelInferResponse.FromString(encoder.encode(r))) for r in (first, second))
    assert a == first and b == second and b.parameters == {}
    np.testing.assert_array_equal(b.output("probs").data, [[0.75, 0.25]])  # a strided view is sent contiguous


def test_metadata_round_trips():
    meta = ModelMetadata(
        name="privsplit",
        versions=("v1",),
        platform="onnxruntime_onnx",
        inputs=(TensorMetadata("features", Datatype.INT8, (-1, 32, 8, 8)),),
        outputs=(TensorMetadata("probs", Datatype.FP32, (-1, 10)), TensorMetadata("label", Datatype.INT64, (-1,))),
    )
    assert ModelMetadata.from_proto(_through_wire(meta.to_proto())) == meta
    server = ServerMetadata(name="privsplit", version="0.1.0", extensions=("parameters",))
    assert ServerMetadata.from_proto(_through_wire(server.to_proto())) == server
    ref = ModelRef("privsplit", "3")
    assert ModelRef.from_proto(_through_wire(ref.to_proto(pb.ModelReadyRequest))) == ref


def test_typed_contents_decode_like_raw():
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="a", datatype="INT8", shape=[2, 2])
    t.contents.int_contents.extend([-128, 0, 5, 127])
    f = msg.inputs.add(name="b", datatype="FP32", shape=[3])
    f.contents.fp32_contents.extend([0.5, -1.0, 2.0])
    req = InferRequest.from_proto(msg)
    np.testing.assert_array_equal(req.inputs[0].data, np.array([[-128, 0], [5, 127]], np.int8))
    np.testing.assert_array_equal(req.inputs[1].data, np.array([0.5, -1.0, 2.0], np.float32))


def _msg(datatype="INT8", shape=(1, 4), raw=b"\x00" * 4, **extra):
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="features", datatype=datatype, shape=list(shape))
    if raw is not None:
        msg.raw_input_contents.append(raw)
    for key, value in extra.items():
        getattr(msg, key).append(value)
    return msg


@pytest.mark.parametrize(
    "msg, field, words",
    [
        (_msg(datatype="INT7"), "inputs[0].datatype", "unknown datatype 'INT7'"),
        (_msg(shape=(1, -4)), "inputs[0].shape", "dimension 1 is -4"),
        (_msg(raw=b"\x00" * 3), "raw_input_contents[0]", "3 bytes, expected 4 for INT8 [1, 4]"),
        (_msg(datatype="FP32", raw=b"\x00" * 4), "raw_input_contents[0]", "4 bytes, expected 16 for FP32 [1, 4]"),
        (_msg(raw=None), "inputs[0].contents", "no data"),
        (_msg(shape=(2**30, 2**30, 2**30)), "inputs[0].shape", "more elements than any message can carry"),
        (_msg(datatype="BYTES"), "inputs[0].datatype", "BYTES tensors are not supported"),
    ],
)
def test_decoding_errors_name_the_field(msg, field, words):
    with pytest.raises(ProtocolError) as err:
        InferRequest.from_proto(msg)
    assert err.value.code is Code.INVALID_ARGUMENT
    assert err.value.field == field and words in str(err.value), str(err.value)


def test_structural_errors():
    msg = _msg()
    msg.raw_input_contents.append(b"\x00")  # two raw entries for one input
    with pytest.raises(ProtocolError, match=r"raw_input_contents: 2 entries for 1 inputs"):
        InferRequest.from_proto(msg)
    msg = _msg()
    msg.inputs[0].contents.int_contents.extend([1, 2, 3, 4])
    with pytest.raises(ProtocolError, match=r"inputs\[0\].contents: typed contents and raw_input_contents together"):
        InferRequest.from_proto(msg)
    msg = pb.ModelInferRequest()
    msg.inputs.add(name="a", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    with pytest.raises(ProtocolError, match=r"inputs\[0\].contents.int_contents: values outside the INT8 range"):
        InferRequest.from_proto(msg)
    msg = pb.ModelInferRequest()
    msg.inputs.add(name="a", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(ProtocolError, match=r"inputs\[0\].contents: FP16 travels only as raw contents"):
        InferRequest.from_proto(msg)
    msg = _msg()
    msg.parameters["scale"].SetInParent()  # a parameter with no value set
    with pytest.raises(ProtocolError, match=r"parameters\['scale'\]: parameter has no value"):
        InferRequest.from_proto(msg)
    msg = _msg()
    msg.inputs.add(name="features", datatype="INT8", shape=[1])
    msg.raw_input_contents.append(b"\x01")
    with pytest.raises(ProtocolError, match=r"inputs\[1\].name: duplicate tensor name 'features'"):
        InferRequest.from_proto(msg)


def test_features_request_and_prediction():
    q = np.arange(-8, 8, dtype=np.int8).reshape(1, 1, 4, 4)
    req = features_request(q, encoder_hash="ab" * 32, scale=0.5, zero_point=-3, label_only=True, request_id="r1")
    msg = _through_wire(req.to_proto())
    assert msg.parameters["encoder_hash"].string_param == "ab" * 32
    assert msg.parameters["label_only"].bool_param is True
    assert msg.inputs[0].parameters["scale"].double_param == 0.5
    assert msg.inputs[0].parameters["zero_point"].int64_param == -3
    assert [o.name for o in msg.outputs] == ["label"]
    assert msg.raw_input_contents[0] == q.tobytes()
    with pytest.raises(ValueError, match="need scale and zero_point"):
        features_request(q, encoder_hash="x")
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        features_request(q[0], encoder_hash="x", scale=1.0, zero_point=0)

    resp = InferResponse(
        model_name="privsplit",
        model_version="v",
        id="r1",
        parameters={"compute_us": 120, "queue_us": 7, "batch_size": 3},
        outputs=(Tensor("probs", np.full((1, 3), 1 / 3, np.float32)), Tensor("label", np.array([2], np.int64))),
    )
    pred = Prediction.from_response(InferResponse.from_proto(_through_wire(resp.to_proto())))
    assert pred.label.tolist() == [2] and pred.probs.shape == (1, 3)
    assert (pred.compute_us, pred.queue_us, pred.batch_size, pred.request_id) == (120, 7, 3, "r1")
