"""A real server on port 0, in process: our stub and the official Triton client, health, reflection,
every refusal with its status code (and the server still answering), streaming, batching, deadlines,
message size, metrics, bearer tokens, TLS and mutual TLS."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_cloud_support import make_certs, run_triton_client, wire_features

from privsplit.bundle import BundleKind, load_bundle
from privsplit.cloud import BatchConfig, ModelHost, ServeConfig, TlsConfig, create_server
from privsplit.proto import InferResponse, Prediction, StreamInferResponse, features_request
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

MAX_MESSAGE = 256 * 1024


@pytest.fixture(scope="module")
def wire(bundles, digits_run):
    return wire_features(bundles, digits_run, count=64)


@pytest.fixture(scope="module")
def server(bundles):
    config = ServeConfig(
        bundle=bundles.cloud,
        port=0,
        metrics_port=0,
        trust_key=bundles.trust_key,
        batch=BatchConfig(max_batch=16, max_delay_ms=1.0, max_request_batch=64),
        max_message_bytes=MAX_MESSAGE,
        reply_load=True,  # the batching tests read batch_size from replies
    )
    srv, port = create_server(config)
    assert port > 0 and not srv.ready
    with srv:
        assert srv.ready
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _request(wire, rows=slice(0, 4), **kw):
    return features_request(
        wire.features[rows], encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point, **kw
    )


def _expected(server, wire, rows):
    x = ((wire.features[rows].astype(np.float32) - wire.zero_point) * wire.scale).astype(np.float32)
    return server.host.infer(x)


def test_health_reflection_and_metadata(server, stub):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(channel)
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(db.get_services())
    assert (
        db.FindFileContainingSymbol("inference.ModelInferRequest").name
        == "privsplit/proto/inference/open_inference_grpc.proto"
    )
    channel.close()

    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="privsplit")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="privsplit", version=server.spec.version)).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="other")).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "privsplit" and "parameters" in meta.extensions
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name="privsplit"))
    assert list(model.versions) == [server.spec.version] and model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("probs", "FP32", [-1, 10]),
        ("label", "INT64", [-1]),
    ]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in err.value.details()


def test_infer_matches_the_model_for_every_input_datatype(server, stub, wire):
    rows = slice(0, 16)
    expected = _expected(server, wire, rows)
    reply = stub.ModelInfer(_request(wire, rows, request_id="r-1").to_proto())
    pred = Prediction.from_response(InferResponse.from_proto(reply))
    np.testing.assert_allclose(pred.probs, expected.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pred.label, expected.labels)
    assert (pred.label == wire.labels[rows]).mean() > 0.5
    assert pred.request_id == "r-1" and pred.model_version == server.spec.version
    assert pred.compute_us > 0 and pred.batch_size == 16  # alone on an idle server: its own 16 rows, one batch
    x = ((wire.features[rows].astype(np.float32) - wire.zero_point) * wire.scale).astype(np.float32)
    u8 = (wire.features[rows].astype(np.int16) + 128).astype(np.uint8)
    variants = [
        features_request(x, encoder_hash=wire.encoder_hash),
        features_request(x.astype(np.float16), encoder_hash=wire.encoder_hash),
        features_request(u8, encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point + 128),
    ]
    for req in variants:
        got = Prediction.from_response(InferResponse.from_proto(stub.ModelInfer(req.to_proto())))
        np.testing.assert_array_equal(got.label, expected.labels)
    only = InferResponse.from_proto(stub.ModelInfer(_request(wire, rows, label_only=True).to_proto()))
    assert [t.name for t in only.outputs] == ["label"]


def test_stream_replies_in_order_and_survives_a_bad_request(server, stub, wire):
    requests = []
    for i in range(12):
        req = _request(wire, slice(i, i + 1 + i % 3), request_id=f"s{i}").to_proto()
        if i == 5:
            req.parameters["encoder_hash"].string_param = "f" * 64
        requests.append(req)
    replies = [StreamInferResponse.from_proto(r) for r in stub.ModelStreamInfer(iter(requests))]
    assert len(replies) == 12
    for i, reply in enumerate(replies):
        if i == 5:
            assert reply.response is None and reply.error_message.startswith("FAILED_PRECONDITION")
            continue
        assert reply.error_message == "" and reply.response.id == f"s{i}"
        expected = _expected(server, wire, slice(i, i + 1 + i % 3))
        np.testing.assert_array_equal(Prediction.from_response(reply.response).label, expected.labels)


def test_concurrent_clients_are_batched_and_all_correct(server, stub, wire):
    def one(i):
        rows = slice(i % 60, i % 60 + 1)
        pred = Prediction.from_response(InferResponse.from_proto(stub.ModelInfer(_request(wire, rows).to_proto())))
        return i, pred

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(240)))
    expected = _expected(server, wire, slice(0, 60))
    for i, pred in results:
        assert pred.label[0] == expected.labels[i % 60]
    assert max(p.batch_size for _, p in results) > 1


def _bad(wire, mutate):
    msg = _request(wire, slice(0, 2)).to_proto()
    mutate(msg)
    return msg


def _set_param(target, key, **value):
    target[key].CopyFrom(pb.InferParameter(**value))


BAD_CASES = [
    (
        "datatype",
        lambda m: (
            setattr(m.inputs[0], "datatype", "INT32"),
            m.raw_input_contents.__setitem__(0, m.raw_input_contents[0] * 4),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].datatype: INT32 is not accepted",
    ),
    (
        "shape",
        lambda m: m.inputs[0].shape.__setitem__(1, 7),
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents[0]:",
    ),
    (
        "dims",
        lambda m: (m.inputs[0].ClearField("shape"), m.inputs[0].shape.extend([2, 32 * 64])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].shape: expected [B, 32, 8, 8]",
    ),
    (
        "bytes",
        lambda m: m.raw_input_contents.__setitem__(0, m.raw_input_contents[0][:-1]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bytes, expected",
    ),
    (
        "rows",
        lambda m: (m.inputs[0].shape.__setitem__(0, 0), m.raw_input_contents.__setitem__(0, b"")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch dimension must be in [1, 64]",
    ),
    (
        "model",
        lambda m: setattr(m, "model_name", "resnet"),
        grpc.StatusCode.NOT_FOUND,
        "model_name: unknown model 'resnet'",
    ),
    (
        "version",
        lambda m: setattr(m, "model_version", "999"),
        grpc.StatusCode.NOT_FOUND,
        "model_version: model 'privsplit' has no version '999'",
    ),
    (
        "hash missing",
        lambda m: m.parameters.pop("encoder_hash"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "parameters['encoder_hash']: missing",
    ),
    (
        "hash type",
        lambda m: _set_param(m.parameters, "encoder_hash", int64_param=5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be a string",
    ),
    (
        "hash wrong",
        lambda m: _set_param(m.parameters, "encoder_hash", string_param="ab" * 32),
        grpc.StatusCode.FAILED_PRECONDITION,
        "is not accepted",
    ),
    (
        "scale missing",
        lambda m: m.inputs[0].parameters.pop("scale"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].parameters['scale']: missing",
    ),
    (
        "zero point missing",
        lambda m: m.inputs[0].parameters.pop("zero_point"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].parameters['zero_point']: missing",
    ),
    (
        "scale negative",
        lambda m: _set_param(m.inputs[0].parameters, "scale", double_param=-1.0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "'scale']: must be a finite number > 0",
    ),
    (
        "scale nan",
        lambda m: _set_param(m.inputs[0].parameters, "scale", double_param=float("nan")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "'scale']: must be a finite number > 0",
    ),
    (
        "zero point range",
        lambda m: _set_param(m.inputs[0].parameters, "zero_point", int64_param=300),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be an integer in [-128, 127]",
    ),
    (
        "input name",
        lambda m: setattr(m.inputs[0], "name", "image"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].name: unknown input 'image'",
    ),
    (
        "output name",
        lambda m: m.outputs.add(name="logits"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outputs[0].name: unknown output 'logits'",
    ),
    (
        "label only",
        lambda m: _set_param(m.parameters, "label_only", string_param="yes"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "'label_only']: must be a bool",
    ),
    (
        "no inputs",
        lambda m: (m.ClearField("inputs"), m.ClearField("raw_input_contents")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs: expected exactly one input",
    ),
    (
        "raw count",
        lambda m: m.raw_input_contents.append(b"x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents: 2 entries for 1 inputs",
    ),
]


@pytest.mark.parametrize("case, mutate, code, words", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_requests_get_their_status_and_the_server_still_answers(server, stub, wire, case, mutate, code, words):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(_bad(wire, mutate))
    assert err.value.code() == code, err.value.details()
    assert words in err.value.details(), err.value.details()
    assert Prediction.from_response(
        InferResponse.from_proto(stub.ModelInfer(_request(wire).to_proto()))
    ).label.shape == (4,)


def test_non_finite_float_features_are_refused(server, stub, wire):
    x = ((wire.features[:2].astype(np.float32) - wire.zero_point) * wire.scale).astype(np.float32)
    for bad, dtype in ((np.nan, np.float32), (np.inf, np.float16)):
        y = x.astype(dtype)
        y[1, 3, 2, 1] = bad
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(features_request(y, encoder_hash=wire.encoder_hash).to_proto())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs[0].contents: 1 NaN or infinite value(s) in 'features'" in err.value.details()


def test_message_size_limit(server, stub, wire):
    big = np.zeros((64, *server.spec.feature_shape), np.float32)  # 64 * 2048 * 4 bytes > 256 KiB
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(features_request(big, encoder_hash=wire.encoder_hash).to_proto())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ModelInfer(_request(wire).to_proto()).outputs


def test_metrics_endpoint(server, stub, wire):
    def scrape():
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return text, values

    labels = f'model="privsplit",version="{server.spec.version}"'
    _, before = scrape()  # the module's server has answered the tests above: count this test's requests only
    stub.ModelInfer(_request(wire).to_proto())  # 4 rows, alone: one batch
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(_bad(wire, lambda m: m.parameters.pop("encoder_hash")))
    text, values = scrape()

    def added(name):
        return values[f"{name}{{{labels}}}"] - before.get(f"{name}{{{labels}}}", 0.0)

    assert values[f"nv_inference_request_success{{{labels}}}"] == server.metrics.counter("nv_inference_request_success")
    assert added("nv_inference_request_success") == 1
    version = f'version="{server.spec.version}"'  # prometheus_client writes labels sorted by name
    invalid = f'nv_inference_request_failure{{model="privsplit",reason="INVALID_ARGUMENT",{version}}}'
    assert values[invalid] - before.get(invalid, 0.0) == 1
    assert added("nv_inference_count") == 4 and added("nv_inference_exec_count") == 1
    assert added("privsplit_batch_size_count") == 1 and added("privsplit_batch_size_sum") == 4
    assert added("nv_inference_compute_infer_duration_us") > 0
    assert added("nv_inference_request_duration_us") > added("nv_inference_queue_duration_us")
    assert values[f"privsplit_batch_size_count{{{labels}}}"] == values[f"nv_inference_exec_count{{{labels}}}"]
    assert values[f"privsplit_ready{{{labels}}}"] == 1.0
    # Triton's sample names exactly (prometheus_client would suffix a typed counter with _total)
    assert "# TYPE nv_inference_request_success untyped" in text and "nv_inference_request_success_total" not in text


def test_official_triton_client(server, wire):
    pytest.importorskip("tritonclient", reason="tritonclient not installed (pip install 'privsplit[dev]')")
    rows = slice(0, 3)
    got = run_triton_client(
        f"127.0.0.1:{server.port}",
        {
            "model": "privsplit",
            "features": wire.features[rows].tolist(),
            "scale": wire.scale,
            "zero_point": wire.zero_point,
            "encoder_hash": wire.encoder_hash,
        },
    )
    expected = _expected(server, wire, rows)
    assert got["live"] and got["ready"] and got["model_ready"] and not got["unknown_model_ready"]
    assert got["server_metadata"]["name"] == "privsplit"
    assert got["model_metadata"]["inputs"][0]["name"] == "features"
    np.testing.assert_allclose(np.asarray(got["infer"]["probs"]), expected.probs, rtol=1e-5, atol=1e-6)
    assert got["infer"]["label"] == expected.labels.tolist() and got["infer"]["id"] == "triton-1"
    assert int(got["infer"]["parameters"]["compute_us"]["int64_param"]) > 0
    assert got["label_only"] == {"label": expected.labels.tolist(), "probs_absent": True}
    assert (
        got["bad_hash"]["status"] == "StatusCode.FAILED_PRECONDITION"
        and "is not accepted" in got["bad_hash"]["message"]
    )


# ---- security ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def _serve(bundles, **kw):
    srv, _port = create_server(ServeConfig(bundle=bundles.cloud_plain, port=0, **kw))
    return srv.start()


def test_bearer_token(bundles, wire):
    srv = _serve(bundles, token="s3cret-token")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = _request(wire).to_proto()
        for metadata, words in (
            (None, "missing 'authorization: Bearer <token>'"),
            ((("authorization", "Bearer wrong"),), "invalid bearer token"),
            ((("authorization", "s3cret-token"),), "invalid bearer token"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and words in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ModelStreamInfer(iter([request])))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.ModelInfer(request, metadata=(("authorization", "Bearer s3cret-token"),))
        assert len(ok.outputs) == 2
        # health checks need no token (probes cannot send one)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert srv.metrics.counter("nv_inference_request_failure", "UNAUTHENTICATED") == 4
        channel.close()
    finally:
        srv.stop(grace=1)


def _secure_stub(port, certs, *, cert=None, key=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=None if key is None else key.read_bytes(),
        certificate_chain=None if cert is None else cert.read_bytes(),
    )
    channel = grpc.secure_channel(f"localhost:{port}", creds)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def test_tls_and_mutual_tls(bundles, certs, wire):
    request = _request(wire).to_proto()
    srv = _serve(bundles, tls=TlsConfig(cert=certs.server_cert, key=certs.server_key))
    try:
        channel, stub = _secure_stub(srv.port, certs)
        assert len(stub.ModelInfer(request, timeout=20).outputs) == 2
        channel.close()
        plain = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}"))
        with pytest.raises(grpc.RpcError) as err:
            plain.ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(grace=1)

    srv = _serve(bundles, tls=TlsConfig(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca))
    try:
        channel, stub = _secure_stub(srv.port, certs, cert=certs.client_cert, key=certs.client_key)
        assert len(stub.ModelInfer(request, timeout=20).outputs) == 2
        channel.close()
        for cert, key in ((None, None), (certs.rogue_cert, certs.rogue_key)):
            channel, stub = _secure_stub(srv.port, certs, cert=cert, key=key)
            with pytest.raises(grpc.RpcError) as err:
                stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            channel.close()
    finally:
        srv.stop(grace=1)


class GatedHost(ModelHost):
    """The real host, held at a gate so that requests are in flight when the drain starts."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gate = threading.Event()
        self.held = 0  # batches that reached the model and wait at the gate
        self.rows: list[int] = []

    def infer(self, features):
        self.held += 1
        self.gate.wait(timeout=20)
        self.rows.append(len(features))
        return super().infer(features)


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (a real state of the server) instead of sleeping a guessed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_deadlines_are_honoured(bundles, wire):
    host = GatedHost(load_bundle(bundles.cloud_plain, kind=BundleKind.CLOUD), name="privsplit")
    srv, port = create_server(
        ServeConfig(bundle=bundles.cloud_plain, port=0, batch=BatchConfig(max_batch=4)), host=host
    )
    with srv:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        host.gate.clear()
        for rows in (slice(0, 1), slice(0, 2)):  # the first holds the model; the second waits in the queue
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(_request(wire, rows).to_proto(), timeout=0.4)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        host.gate.set()
        assert len(stub.ModelInfer(_request(wire, slice(0, 3)).to_proto(), timeout=20).outputs) == 2
        assert host.rows == [1, 3]  # the request whose deadline passed in the queue never ran


def test_drain_finishes_in_flight_and_refuses_new(bundles, wire):
    """In process: requests in flight when stop() begins all complete; afterwards the port refuses."""
    host = GatedHost(load_bundle(bundles.cloud_plain, kind=BundleKind.CLOUD), name="privsplit")
    srv, port = create_server(
        ServeConfig(bundle=bundles.cloud_plain, port=0, batch=BatchConfig(max_batch=4)), host=host
    )
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(stub.ModelInfer, _request(wire).to_proto(), timeout=30) for _ in range(8)]
        # in flight for real before the drain begins: one held in the model (4 rows: a full batch), 7 queued
        _wait_for(lambda: host.held == 1 and srv.batcher.depth == 7, "the 8 requests to reach the server")
        stopper = threading.Thread(target=srv.stop, kwargs={"grace": 20})
        stopper.start()
        _wait_for(lambda: not srv.ready, "the drain to begin")
        assert not host.rows  # nothing ran before the drain: every request was still in flight
        host.gate.set()
        replies = [f.result() for f in futures]
        stopper.join(30)
    assert all(len(r.outputs) == 2 for r in replies)
    with pytest.raises(grpc.RpcError) as err:
        stub.ServerLive(pb.ServerLiveRequest(), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_rpcs_beyond_the_concurrency_bound_get_resource_exhausted(bundles, wire):
    srv, port = create_server(ServeConfig(bundle=bundles.cloud_plain, port=0, rpc_threads=4, max_concurrent_rpcs=2))
    request = _request(wire, slice(0, 1)).to_proto()
    gate = threading.Event()

    def held_open():
        yield request
        gate.wait(30)  # the stream stays open (and holds its worker) until the gate opens

    with srv:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        streams = [stub.ModelStreamInfer(held_open(), timeout=30) for _ in range(2)]
        try:
            assert all(len(next(s).infer_response.outputs) == 2 for s in streams)  # both streams are in flight
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - started < 5
            from privsplit.proto.channel import rpc_error

            assert "is busy (at its --max-concurrent-rpcs limit)" in str(rpc_error(err.value, f"127.0.0.1:{port}"))
        finally:
            gate.set()
        assert all(list(s) == [] for s in streams)
        assert len(stub.ModelInfer(request, timeout=10).outputs) == 2  # a slot is free again
        channel.close()
    with pytest.raises(Exception, match="--max-concurrent-rpcs must be in 1..--rpc-threads"):
        ServeConfig(bundle=bundles.cloud_plain, rpc_threads=4, max_concurrent_rpcs=5)


def test_metric_counts_are_exact_under_concurrent_load(server, wire):
    from privsplit.cloud.metrics import Metrics

    metrics = Metrics(model="m", version="1")  # the counters alone, hammered from many threads

    def hammer(_):
        for _ in range(5000):
            metrics.success(request_us=1, queue_us=2, rows=3)
            metrics.failure("INVALID_ARGUMENT")

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(hammer, range(32)))
    assert metrics.counter("nv_inference_request_success") == 160_000
    assert metrics.counter("nv_inference_count") == 480_000
    assert metrics.counter("nv_inference_request_duration_us") == 160_000
    assert metrics.counter("nv_inference_request_failure", "INVALID_ARGUMENT") == 160_000

    # and through the server: 64 clients at once, good and bad requests
    before = {name: server.metrics.counter(name) for name in ("nv_inference_request_success", "nv_inference_count")}
    bad_before = server.metrics.counter("nv_inference_request_failure", "NOT_FOUND")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def one(i):
        if i % 4 == 3:
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(_request(wire, slice(0, 1), model_name="nope").to_proto(), timeout=30)
            return 0
        return len(stub.ModelInfer(_request(wire, slice(i % 50, i % 50 + 2)).to_proto(), timeout=30).outputs)

    with ThreadPoolExecutor(64) as pool:
        outputs = list(pool.map(one, range(512)))
    channel.close()
    assert outputs.count(2) == 384
    assert server.metrics.counter("nv_inference_request_success") - before["nv_inference_request_success"] == 384
    assert server.metrics.counter("nv_inference_count") - before["nv_inference_count"] == 768
    assert server.metrics.counter("nv_inference_request_failure", "NOT_FOUND") - bad_before == 128


def test_an_rpc_arriving_during_the_drain_gets_unavailable_not_a_hang(bundles, wire):
    host = GatedHost(load_bundle(bundles.cloud_plain, kind=BundleKind.CLOUD), name="privsplit")
    config = ServeConfig(bundle=bundles.cloud_plain, port=0, batch=BatchConfig(max_batch=4))
    srv, port = create_server(config, host=host)
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(stub.ModelInfer, _request(wire).to_proto(), timeout=30)
        time.sleep(0.3)
        stopper = threading.Thread(target=srv.stop, kwargs={"grace": 20})
        stopper.start()
        time.sleep(0.3)
        assert not srv.ready and not in_flight.done()  # draining: the gated request is still in flight
        for fresh in (stub, pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                fresh.ModelInfer(_request(wire, slice(0, 1)).to_proto(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 3
        host.gate.set()
        assert len(in_flight.result(timeout=30).outputs) == 2  # the one in flight still completes
        stopper.join(30)
    channel.close()
