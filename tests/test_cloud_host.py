"""The model host (bundle -> onnxruntime) and the dynamic batcher, without the transport."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_cloud_support import wire_features

from privsplit.cloud.batcher import DynamicBatcher
from privsplit.cloud.config import BatchConfig
from privsplit.cloud.model_host import ModelHost
from privsplit.errors import BundleError
from privsplit.proto.status import Code, ProtocolError


@pytest.fixture(scope="module")
def wire(bundles, digits_run):
    return wire_features(bundles, digits_run, count=128)


@pytest.fixture(scope="module")
def host(bundles):
    return ModelHost.open(bundles.cloud, name="privsplit", trust_key=bundles.trust_key)


def _dequantize(wire):
    return ((wire.features.astype(np.float32) - wire.zero_point) * wire.scale).astype(np.float32)


def test_host_chains_server_and_purifier_like_onnxruntime(host, bundles, wire):
    import onnxruntime as ort

    x = _dequantize(wire)
    out = host.infer(x)
    server = ort.InferenceSession(str(bundles.cloud / "server.onnx"), providers=["CPUExecutionProvider"])
    purifier = ort.InferenceSession(str(bundles.cloud / "purifier.onnx"), providers=["CPUExecutionProvider"])
    raw = server.run(["probs"], {"features": x})[0]
    expected = purifier.run(["purified"], {"probs": raw})[0]
    np.testing.assert_allclose(out.probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.labels, expected.argmax(1))
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-4)
    assert out.probs.dtype == np.float32 and out.labels.dtype == np.int64 and out.compute_us > 0
    # the purifier preserves the label and actually reshapes the confidences
    np.testing.assert_array_equal(out.labels, raw.argmax(1))
    assert np.abs(out.probs - raw).max() > 1e-3
    # real features of real holdout digits: the served label is the digit far above chance (10 %)
    assert (out.labels == wire.labels).mean() > 0.5


def test_spec_comes_from_the_manifest(host, bundles, wire):
    spec = host.spec
    assert spec.feature_shape == tuple(wire.features.shape[1:])
    assert spec.num_classes == 10 and spec.purifier
    assert wire.encoder_hash in spec.accepted_encoder_hashes
    meta = spec.metadata()
    assert [t.name for t in meta.inputs] == ["features"] and [t.name for t in meta.outputs] == ["probs", "label"]
    assert meta.inputs[0].shape == (-1, *spec.feature_shape) and meta.versions == (spec.version,)
    plain = ModelHost.open(bundles.cloud_plain, name="p")
    assert not plain.spec.purifier


def test_bundle_trust_and_integrity(bundles, tmp_path):
    with pytest.raises(BundleError, match="signed by key"):
        ModelHost.open(bundles.cloud, name="m", trust_key=bundles.other_key)
    with pytest.raises(BundleError, match="manifest.sig missing"):
        ModelHost.open(bundles.cloud_plain, name="m", trust_key=bundles.trust_key)
    with pytest.raises(BundleError, match="cloud bundle was expected|serve the cloud bundle"):
        ModelHost.open(bundles.edge, name="m")
    bad = tmp_path / "cloud"
    shutil.copytree(bundles.cloud, bad)
    data = bytearray((bad / "server.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "server.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"server.onnx is tampered"):
        ModelHost.open(bad, name="m")


def test_serving_imports_no_torch(bundles, wire):
    code = f"""
import sys, numpy as np, grpc
import privsplit.cloud
from privsplit.cloud import ServeConfig, create_server
from privsplit.proto import features_request, InferResponse, Prediction
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pbg
server, port = create_server(ServeConfig(bundle={str(bundles.cloud)!r}, port=0))
with server:
    stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{{port}}"))
    q = np.zeros((2, *server.spec.feature_shape), np.int8)
    reply = stub.ModelInfer(features_request(q, encoder_hash={wire.encoder_hash!r}, scale=0.1, zero_point=0).to_proto())
    assert Prediction.from_response(InferResponse.from_proto(reply)).label.shape == (2,)
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ---- batcher ----------------------------------------------------------------------------------------
def _submit_in_thread(batcher, features):
    """Submit from another thread: a request that finds the model idle runs inline in its caller."""
    out = []
    thread = threading.Thread(target=lambda: out.append(batcher.submit(features)), daemon=True)
    thread.start()
    return out, thread


class GatedModel:
    """The real host behind a gate, recording the batch sizes it ran."""

    def __init__(self, host):
        self.host = host
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def __call__(self, x):
        self.entered.set()
        self.gate.wait(timeout=10)
        self.batches.append(len(x))
        return self.host.infer(x)


def test_batches_form_and_replies_keep_request_order(host, wire):
    model = GatedModel(host)
    x = _dequantize(wire)
    sizes = [1, 3, 2, 1, 5, 1, 1, 4, 2, 1] * 3
    chunks, start = [], 0
    for n in sizes:
        chunks.append(x[start : start + n])
        start += n
    direct = host.infer(x[:start])

    batcher = DynamicBatcher(model, BatchConfig(max_batch=8)).start()
    model.gate.clear()
    first, thread = _submit_in_thread(batcher, chunks[0])
    assert model.entered.wait(10)  # the first request runs inline in its thread, held at the gate
    tickets = [batcher.submit(c) for c in chunks[1:]]  # the model is busy: these queue
    model.gate.set()
    thread.join(10)
    results = [t.result(30) for t in first + tickets]
    batcher.close()

    got = np.concatenate([r.probs for r in results])
    np.testing.assert_allclose(got, direct.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([r.labels for r in results]), direct.labels)
    assert model.batches[0] == 1 and max(model.batches) <= 8 and len(model.batches) < len(sizes) / 2
    assert sum(model.batches) == start
    assert all(r.batch_size >= len(c) for r, c in zip(results, chunks))


def test_full_queue_timeout_deadline_and_drain(host, wire):
    model = GatedModel(host)
    one = _dequantize(wire)[:1]
    batcher = DynamicBatcher(model, BatchConfig(max_batch=4, max_queue=3, queue_timeout_ms=150)).start()
    model.gate.clear()
    running, thread = _submit_in_thread(batcher, one)
    assert model.entered.wait(10)
    queued = [batcher.submit(one) for _ in range(2)]
    short = batcher.submit(one, timeout_s=0.05)
    with pytest.raises(ProtocolError) as full:
        batcher.submit(one)
    time.sleep(0.3)  # past the queue timeout and the short deadline
    model.gate.set()
    thread.join(10)
    assert running[0].result(10).labels.shape == (1,)  # the request already running finishes
    outcomes = []
    for ticket in (*queued, short):
        with pytest.raises(ProtocolError) as err:
            ticket.result(10)
        outcomes.append(err.value)
    batcher.close()
    with pytest.raises(ProtocolError) as closed:
        batcher.submit(one)
    assert full.value.code is Code.RESOURCE_EXHAUSTED and "queue is full (3 requests waiting)" in str(full.value)
    assert [o.code for o in outcomes[:2]] == [Code.UNAVAILABLE] * 2 and "waited more than 150 ms" in str(outcomes[0])
    assert outcomes[2].code is Code.DEADLINE_EXCEEDED
    assert closed.value.code is Code.UNAVAILABLE and "draining" in str(closed.value)
    assert model.batches == [1]  # nothing expired was run


def test_close_finishes_queued_requests_and_abandoned_ones_are_skipped(host, wire):
    model = GatedModel(host)
    one = _dequantize(wire)[:1]
    batcher = DynamicBatcher(model, BatchConfig(max_batch=1)).start()
    model.gate.clear()
    first, thread = _submit_in_thread(batcher, one)
    assert model.entered.wait(10)
    gone = batcher.submit(one)
    gone.abandon()
    kept = [batcher.submit(one) for _ in range(3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.1)
    model.gate.set()
    closer.join(10)
    thread.join(10)
    assert first[0].result(1).labels.shape == (1,) and all(t.result(1).labels.shape == (1,) for t in kept)
    assert model.batches == [1, 1, 1, 1]  # the abandoned request never ran


def test_max_delay_waits_only_for_requests_already_arriving(host, wire):
    one = _dequantize(wire)[:1]
    for delay_ms, announce, expected in ((300.0, True, [4]), (0.0, True, [1, 1, 1, 1]), (300.0, False, [1, 1, 1, 1])):
        model = GatedModel(host)
        batcher = DynamicBatcher(model, BatchConfig(max_batch=4, max_delay_ms=delay_ms)).start()
        if announce:  # four RPC threads are decoding requests
            for _ in range(4):
                batcher.expect()
        tickets = []
        started = time.monotonic()
        for _ in range(4):
            tickets.append(batcher.submit(one, expected=announce))
            for t in tickets:  # without announcements each request runs alone, at once
                if not announce:
                    t.result(10)
            time.sleep(0.02)
        for t in tickets:
            t.result(10)
        batcher.close()
        assert model.batches == expected, (delay_ms, announce, model.batches)
        assert time.monotonic() - started < 0.3 + 1.0
    # an announced request that is refused while decoding stops the wait at once
    model = GatedModel(host)
    batcher = DynamicBatcher(model, BatchConfig(max_batch=4, max_delay_ms=5000)).start()
    batcher.expect()
    batcher.expect()
    ticket = batcher.submit(one, expected=True)
    time.sleep(0.05)
    started = time.monotonic()
    batcher.unexpect()
    ticket.result(10)
    assert time.monotonic() - started < 1.0 and model.batches == [1]
    batcher.close()


def test_a_failing_batch_fails_only_its_requests(host, wire):
    one = _dequantize(wire)[:1]
    calls = []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 1:
            return host.infer(x[:, :1])  # wrong shape: onnxruntime raises
        return host.infer(x)

    batcher = DynamicBatcher(flaky, BatchConfig(max_batch=1)).start()
    with pytest.raises(ProtocolError) as err:
        batcher.infer(one, timeout_s=10)
    ok = batcher.infer(one, timeout_s=10)
    batcher.close()
    assert err.value.code is Code.INTERNAL and "the model failed on a batch of 1 rows" in str(err.value)
    assert ok.labels.shape == (1,)


def test_a_lone_request_runs_inline_and_busy_ones_queue(host, wire):
    one = _dequantize(wire)[:1]
    threads = []

    def model(x):
        threads.append(threading.current_thread().name)
        return host.infer(x)

    batcher = DynamicBatcher(model, BatchConfig()).start()
    assert batcher.infer(one, timeout_s=10).batch_size == 1
    batcher.expect()  # this request is announced ...
    batcher.expect()  # ... and another one is arriving: this one goes through the model thread
    batcher.submit(one, expected=True).result(10)
    batcher.unexpect()
    batcher.close()
    assert threads == [threading.current_thread().name, "privsplit-model"]


def test_an_abandoned_queued_request_releases_its_waiter_and_results_can_be_read_again(host, wire):
    model = GatedModel(host)
    one = _dequantize(wire)[:1]
    batcher = DynamicBatcher(model, BatchConfig(max_batch=1)).start()
    model.gate.clear()
    first, thread = _submit_in_thread(batcher, one)
    assert model.entered.wait(10)
    gone, kept = batcher.submit(one), batcher.submit(one)
    waiting: list = []

    def wait_without_deadline():  # a handler whose client had no deadline: it must not wait forever
        try:
            gone.result()
        except ProtocolError as exc:
            waiting.append(exc)

    waiter = threading.Thread(target=wait_without_deadline, daemon=True)
    waiter.start()
    gone.abandon()  # the client went away (gRPC's done-callback)
    model.gate.set()
    waiter.join(10)
    thread.join(10)
    assert not waiter.is_alive() and waiting[0].code is Code.CANCELLED
    assert kept.result(10).labels.shape == (1,) and kept.result(0).labels.shape == (1,)  # read twice
    batcher.close()
    assert model.batches == [1, 1]  # the abandoned request never ran
