"""The device client against a real server on port 0 (in process): unary and streaming inference,
retries with backoff, unreachable and late servers, deadlines, refusals, TLS / mutual TLS / token,
and the ``edge infer`` / ``edge bench`` commands."""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import numpy as np
import pytest
from test_cloud_support import make_certs
from test_edge_support import free_port, holdout, write_pngs

from privsplit.cli.main import main
from privsplit.cloud import BatchConfig, ServeConfig, TlsConfig, create_server
from privsplit.edge.client import ClientConfig, ClientTls, EdgeClient, RetryPolicy, ServerUnavailable
from privsplit.edge.infer import infer_inputs, stream_frames
from privsplit.edge.pipeline import EdgePipeline
from privsplit.proto.status import Code, ProtocolError
from privsplit.proto.wire import features_request

pytestmark = pytest.mark.slow  # the session's bundles: training + export (~1 min), shared with the other edge tests

FAST = RetryPolicy(attempts=4, initial_backoff_s=0.05, max_backoff_s=0.2, jitter=0.0)


@pytest.fixture(scope="module")
def server(bundles):
    srv, _ = create_server(ServeConfig(bundle=bundles.cloud, port=0, trust_key=bundles.trust_key, batch=BatchConfig(max_batch=16)))
    with srv:
        yield srv


@pytest.fixture(scope="module")
def pipe(bundles):
    return EdgePipeline.open(bundles.edge, trust_key=bundles.trust_key, seed=0)


@pytest.fixture(scope="module")
def images(bundles):
    return holdout(bundles.run, 24)


def _expected(server, pipe, images):
    return server.host.infer(pipe.encode(images)[1].dequantize()).labels


def test_unary_and_stream_return_the_servers_prediction_for_every_input(server, pipe, images):
    imgs, labels = images
    expected = _expected(server, pipe, imgs)
    assert (expected == labels).mean() > 0.8
    with EdgeClient(ClientConfig(target=f"127.0.0.1:{server.port}", retry=FAST)) as client:
        assert client.server_ready() and client.model_ready()
        assert client.model_metadata().inputs[0].shape == (-1, *pipe.wire.shape)
        for kwargs in ({"batch_size": 1}, {"batch_size": 5}, {"stream": True, "batch_size": 2}):
            report = infer_inputs(pipe, client, imgs, **kwargs)
            assert report.failed == 0, kwargs
            assert [r.source for r in report.results] == [f"frame[{i}]" for i in range(len(imgs))]
            np.testing.assert_array_equal([r.label for r in report.results], expected)
            assert all(abs(sum(r.probs) - 1) < 1e-4 and r.confidence == max(r.probs) for r in report.results)
            assert all(r.class_name == str(r.label) for r in report.results)
        assert client.retries == 0


def test_files_are_decoded_per_request_and_a_bad_one_fails_alone(server, pipe, images, tmp_path):
    imgs, _ = images
    paths = write_pngs(imgs[:5], tmp_path / "imgs")
    (tmp_path / "imgs" / "img002b.png").write_bytes(b"\x89PNG but truncated")
    expected = _expected(server, pipe, imgs[:5])
    with EdgeClient(ClientConfig(target=f"127.0.0.1:{server.port}")) as client:
        for stream in (False, True):
            report = infer_inputs(pipe, client, [tmp_path / "imgs", tmp_path / "missing.png"], batch_size=3, stream=stream)
            assert [r.source for r in report.results] == [str(p) for p in paths[:3]] + [str(tmp_path / "imgs" / "img002b.png")] + [
                str(p) for p in paths[3:]] + [str(tmp_path / "missing.png")]  # fmt: skip
            assert [r.ok for r in report.results] == [True, True, True, False, True, True, False]
            np.testing.assert_array_equal([r.label for r in report.results if r.ok], expected)
            assert "cannot decode" in report.results[3].error and "not found" in report.results[6].error


def test_camera_stream_yields_one_result_per_frame_in_order(server, pipe, images):
    imgs, _ = images
    expected = _expected(server, pipe, imgs[:6])
    frames = [imgs[i, :, :, 0] for i in range(3)] + [np.zeros((4, 4), np.float32)] + [imgs[i] for i in range(3, 6)]
    with EdgeClient(ClientConfig(target=f"127.0.0.1:{server.port}")) as client:
        results = list(stream_frames(pipe, client, iter(frames)))
    assert [r.source for r in results] == [f"frame[{i}]" for i in range(7)]
    assert not results[3].ok and "uint8" in results[3].error
    np.testing.assert_array_equal([r.label for r in results if r.ok], expected)


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2.0, jitter=0.5)
    rng = random.Random(3)
    for retry, base in enumerate([0.1, 0.2, 0.4, 0.5, 0.5]):
        draws = [policy.delay(retry, rng) for _ in range(200)]
        assert base * 0.5 <= min(draws) and max(draws) <= base
        assert max(draws) - min(draws) > base * 0.4  # jitter spreads the retries of many devices
    assert RetryPolicy(jitter=0.0).delay(2, rng) == pytest.approx(0.4)
    with pytest.raises(Exception, match="attempts"):
        RetryPolicy(attempts=0)


def test_an_unreachable_server_is_a_clear_error_after_bounded_retries(pipe, images):
    port = free_port()
    config = ClientConfig(target=f"127.0.0.1:{port}", retry=FAST, timeout_s=2.0)
    with EdgeClient(config) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match=f"cannot reach the server at 127.0.0.1:{port} after 4 attempt") as err:
            client.server_ready()
        elapsed = time.monotonic() - started
        assert err.value.code is Code.UNAVAILABLE and client.retries == 3
        assert 0.35 <= elapsed < 3.0  # 0.05 + 0.1 + 0.2 s of backoff, then it gives up
        report = infer_inputs(pipe, client, images[0][:3], batch_size=2)
    assert report.failed == 3 and all("cannot reach the server" in r.error for r in report.results)


def test_retries_reach_a_server_that_comes_up_late(bundles, pipe, images):
    port = free_port()
    holder = {}

    def start_late():
        time.sleep(0.5)
        srv, _ = create_server(ServeConfig(bundle=bundles.cloud, port=port))
        holder["server"] = srv.start()

    thread = threading.Thread(target=start_late)
    thread.start()
    policy = RetryPolicy(attempts=12, initial_backoff_s=0.1, max_backoff_s=0.3, jitter=0.5)
    try:
        with EdgeClient(ClientConfig(target=f"127.0.0.1:{port}", retry=policy, seed=1)) as client:
            report = infer_inputs(pipe, client, images[0][:6], stream=True)  # the stream opens before the server is up
            assert report.failed == 0 and client.retries >= 1
            retried = client.retries
            assert infer_inputs(pipe, client, images[0][:2]).failed == 0
            assert client.retries == retried
    finally:
        thread.join()
        if "server" in holder:
            holder["server"].stop(grace=0)


def test_deadlines_and_refusals_are_explicit_and_not_retried(bundles, server, pipe, images):
    wire = pipe.encode(images[0][:1])[1]
    request = features_request(wire.data, encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point)
    with socket.socket() as hung:  # a black-holed server: the kernel accepts TCP, nothing ever answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        with EdgeClient(ClientConfig(target=f"127.0.0.1:{hung.getsockname()[1]}", timeout_s=0.5, retry=FAST)) as client:
            started = time.monotonic()
            with pytest.raises(ProtocolError, match="within the 0.5 s deadline") as err:
                client.infer(request)
            elapsed = time.monotonic() - started
            assert err.value.code is Code.DEADLINE_EXCEEDED and 0.4 < elapsed < 2.0 and client.retries == 0
    foreign = features_request(wire.data, encoder_hash="ab" * 32, scale=wire.scale, zero_point=wire.zero_point)
    with EdgeClient(ClientConfig(target=f"127.0.0.1:{server.port}", retry=FAST)) as client:
        with pytest.raises(ProtocolError, match="not accepted") as err:
            client.infer(foreign)
        assert err.value.code is Code.FAILED_PRECONDITION and client.retries == 0
        replies = list(client.stream([("a", request.to_proto().SerializeToString()), ("b", foreign.to_proto().SerializeToString())]))
        assert replies[0].ok and not replies[1].ok and replies[1].code is Code.FAILED_PRECONDITION


def test_tls_mutual_tls_and_token(bundles, pipe, images, tmp_path):
    certs = make_certs(tmp_path / "certs")
    config = ServeConfig(bundle=bundles.cloud, port=0, token="s3cret-token",
                         tls=TlsConfig(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca))  # fmt: skip
    srv, port = create_server(config)
    target = f"localhost:{port}"
    device = ClientTls(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    two = RetryPolicy(attempts=2, initial_backoff_s=0.05, jitter=0.0)
    with srv:
        with EdgeClient(ClientConfig(target=target, tls=device, token="s3cret-token", retry=two)) as client:
            assert infer_inputs(pipe, client, images[0][:4], stream=True).failed == 0
            assert infer_inputs(pipe, client, images[0][:4]).failed == 0
        for token, match in ((None, "missing 'authorization"), ("wrong", "invalid bearer token")):
            with EdgeClient(ClientConfig(target=target, tls=device, token=token, retry=two)) as client:
                with pytest.raises(ProtocolError, match=match) as err:
                    client.server_ready()
                assert err.value.code is Code.UNAUTHENTICATED and client.retries == 0
        rogue = ClientTls(ca=certs.ca, cert=certs.rogue_cert, key=certs.rogue_key)
        for tls in (rogue, None):  # a certificate from another CA; plaintext to a TLS port
            with EdgeClient(ClientConfig(target=target, tls=tls, token="s3cret-token", retry=two)) as client:
                with pytest.raises(ServerUnavailable):
                    client.server_ready()


def test_edge_infer_and_bench_commands(bundles, server, pipe, images, tmp_path, capsys):
    paths = write_pngs(images[0][:4], tmp_path / "imgs")
    expected = _expected(server, pipe, images[0][:4])
    rc = main(["edge", "infer", str(bundles.edge), "--trust-key", str(bundles.trust_key), "--server", f"127.0.0.1:{server.port}",
               str(tmp_path / "imgs"), "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["failed"] == 0 and out["pipeline"]["encoder"] == "tflite-int8"
    assert [r["label"] for r in out["results"]] == list(expected)
    rc = main(["edge", "infer", str(bundles.edge), "--server", f"127.0.0.1:{server.port}", "--runtime", "onnxruntime", "--stream",
               str(paths[0]), str(tmp_path / "nope.png")])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1 and "onnx-fp32 on onnxruntime" in captured.out and "nope.png" in captured.out and "not found" in captured.out
    rc = main(["edge", "infer", str(bundles.edge), "--server", f"127.0.0.1:{free_port()}", "--retries", "1", str(paths[0])])
    assert rc == 1 and "cannot reach the server" in capsys.readouterr().err

    results = {}
    for runtime in ("litert", "onnxruntime"):
        path = tmp_path / f"bench-{runtime}.json"
        rc = main(["edge", "bench", str(bundles.edge), "--runtime", runtime, "--threads", "1", "--warmup", "2", "--runs", "20",
                   "--server", f"127.0.0.1:{server.port}", "--json", str(path)])  # fmt: skip
        assert rc == 0 and "p99" in capsys.readouterr().out
        results[runtime] = data = json.loads(path.read_text())
        assert data["runtime"] == runtime and data["runs"] == 20 and data["peak_rss_mb"] > 10
        assert data["init_ms"] > 0 and data["first_ms"] > 0 and len(data["samples_ms"]) == 20
        samples = np.asarray(data["samples_ms"])  # the device total of every run, rounded to 0.1 us
        expected = {"mean_ms": samples.mean(), **{f"p{q}_ms": np.percentile(samples, q) for q in (50, 90, 99)}}
        for key, value in expected.items():
            assert data[key] == pytest.approx(value, abs=1e-3), key
        assert set(data["stages"]) == {"decode", "preprocess", "encode", "quantize", "serialize", "rpc", "server"}
        for stage, stats in data["stages"].items():  # every stage does real work: at least a microsecond
            assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"], stage
        assert data["stages"]["rpc"]["p50_ms"] <= data["p50_ms"] <= data["p99_ms"]
        assert data["feature_bytes"] == int(np.prod(pipe.wire.shape))
        zeros = np.zeros((1, *pipe.wire.shape), np.int8)
        int8 = {"scale": pipe.wire.scale, "zero_point": pipe.wire.zero_point}
        for key, features, rid, quant in (("bytes_per_request", zeros, "-1", int8),
                                         ("bytes_float32_request", zeros.astype(np.float32), "0", {})):  # fmt: skip
            request = features_request(features, encoder_hash=pipe.encoder_hash, model_name="privsplit", request_id=rid,
                                       **quant)  # fmt: skip
            assert data[key] == len(request.to_proto().SerializeToString()), key
        assert data["bytes_per_request"] < 0.3 * data["bytes_float32_request"]
    assert results["litert"]["encoder"] == "tflite-int8" and results["onnxruntime"]["encoder"] == "onnx-fp32"
    assert results["litert"]["bytes_per_request"] == results["onnxruntime"]["bytes_per_request"]
