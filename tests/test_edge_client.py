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
    srv, _ = create_server(
        ServeConfig(bundle=bundles.cloud, port=0, trust_key=bundles.trust_key, batch=BatchConfig(max_batch=16))
    )
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
            report = infer_inputs(
                pipe, client, [tmp_path / "imgs", tmp_path / "missing.png"], batch_size=3, stream=stream
            )
            assert [r.source for r in report.results] == [str(p) for p in paths[:3]] + [
                str(tmp_path / "imgs" / "img002b.png")
            ] + [str(p) for p in paths[3:]] + [str(tmp_path / "missing.png")]
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


def test_retries_stay_within_the_calls_deadline():
    """A generous retry budget (50 attempts) is cut by the call's deadline: no retry starts after it."""
    policy = RetryPolicy(attempts=50, initial_backoff_s=0.1, max_backoff_s=0.1, jitter=0.0)
    port = free_port()
    with EdgeClient(ClientConfig(target=f"127.0.0.1:{port}", retry=policy, timeout_s=0.5)) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match=f"at 127.0.0.1:{port} after [2-6] attempt") as err:
            client.server_ready()
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.6 and 2 <= client.retries <= 5 and err.value.code is Code.UNAVAILABLE


def test_an_unreachable_server_is_a_clear_error_after_bounded_retries(pipe, images):
    port = free_port()
    config = ClientConfig(target=f"127.0.0.1:{port}", retry=FAST, timeout_s=2.0)
    with EdgeClient(config) as client:
        started = time.monotonic()
        with pytest.raises(
            ServerUnavailable, match=f"cannot reach the server at 127.0.0.1:{port} after 4 attempt"
        ) as err:
            client.server_ready()
        elapsed = time.monotonic() - started
        assert err.value.code is Code.UNAVAILABLE and client.retries == 3
        assert 0.35 <= elapsed < 3.0  # 0.05 + 0.1 + 0.2 s of backoff, then it gives up
        report = infer_inputs(pipe, client, images[0][:3], batch_size=2)
        assert client.retries == 6  # one check of the server per call (3 retries), not one per request
    assert report.failed == 0 and report.skipped == 3 and all(r.skipped for r in report.results)
    assert f"cannot reach the server at 127.0.0.1:{port}" in report.stopped_by
    assert all("cannot reach" not in r.error and len(r.error) < 100 for r in report.results)
    assert "3 skipped" in report.summary() and report.stopped_by in report.summary()


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
        replies = list(
            client.stream(
                [("a", request.to_proto().SerializeToString()), ("b", foreign.to_proto().SerializeToString())]
            )
        )
        assert replies[0].ok and not replies[1].ok and replies[1].code is Code.FAILED_PRECONDITION


def test_tls_mutual_tls_and_token(bundles, pipe, images, tmp_path):
    certs = make_certs(tmp_path / "certs")
    config = ServeConfig(
        bundle=bundles.cloud,
        port=0,
        token="s3cret-token",
        tls=TlsConfig(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca),
    )
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
    rc = main(
        [
            "edge",
            "infer",
            str(bundles.edge),
            "--trust-key",
            str(bundles.trust_key),
            "--server",
            f"127.0.0.1:{server.port}",
            str(tmp_path / "imgs"),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["failed"] == 0 and out["pipeline"]["encoder"] == "tflite-int8"
    assert [r["label"] for r in out["results"]] == list(expected)
    rc = main(
        [
            "edge",
            "infer",
            str(bundles.edge),
            "--trust-key",
            str(bundles.trust_key),
            "--server",
            f"127.0.0.1:{server.port}",
            "--runtime",
            "onnxruntime",
            "--stream",
            str(paths[0]),
            str(tmp_path / "nope.png"),
        ]
    )
    captured = capsys.readouterr()
    assert (
        rc == 1
        and "onnx-fp32 on onnxruntime" in captured.out
        and "nope.png" in captured.out
        and "not found" in captured.out
    )
    rc = main(
        [
            "edge",
            "infer",
            str(bundles.edge),
            "--trust-key",
            str(bundles.trust_key),
            "--server",
            f"127.0.0.1:{free_port()}",
            "--retries",
            "1",
            str(paths[0]),
        ]
    )
    assert rc == 1 and "cannot reach the server" in capsys.readouterr().err

    results = {}
    for runtime in ("litert", "onnxruntime"):
        path = tmp_path / f"bench-{runtime}.json"
        rc = main(
            [
                "edge",
                "bench",
                str(bundles.edge),
                "--trust-key",
                str(bundles.trust_key),
                "--runtime",
                runtime,
                "--threads",
                "1",
                "--warmup",
                "2",
                "--runs",
                "20",
                "--server",
                f"127.0.0.1:{server.port}",
                "--json",
                str(path),
            ]
        )
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
        for key, features, rid, quant in (
            ("bytes_per_request", zeros, "-1", int8),
            ("bytes_float32_request", zeros.astype(np.float32), "0", {}),
        ):
            request = features_request(
                features,
                encoder_hash=pipe.encoder_hash,
                manifest_hash=pipe.manifest_hash,
                model_name="privsplit",
                request_id=rid,
                **quant,
            )
            assert data[key] == len(request.to_proto().SerializeToString()), key
        assert data["bytes_per_request"] < 0.3 * data["bytes_float32_request"]
    assert results["litert"]["encoder"] == "tflite-int8" and results["onnxruntime"]["encoder"] == "onnx-fp32"
    assert results["litert"]["bytes_per_request"] == results["onnxruntime"]["bytes_per_request"]


def _timed_infer(capsys, args) -> tuple[int, float, str, str]:
    started = time.monotonic()
    rc = main(["edge", "infer", *args])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    return rc, elapsed, captured.out, captured.err


def test_edge_infer_asks_an_unreachable_server_once_and_skips_the_rest(bundles, images, tmp_path, capsys):
    """Issue 16.1: a closed port costs one retry budget per invocation (20 images <= 2x one image); a
    listener that never answers costs one deadline (20 images <= 1.5x --timeout); one error line."""
    paths = [str(p) for p in write_pngs(images[0][:20], tmp_path / "imgs")]
    closed = f"127.0.0.1:{free_port()}"
    rc1, one, _, _ = _timed_infer(
        capsys, [str(bundles.edge), "--trust-key", str(bundles.trust_key), "--server", closed, paths[0]]
    )
    rc20, twenty, out, err = _timed_infer(
        capsys, [str(bundles.edge), "--trust-key", str(bundles.trust_key), "--server", closed, *paths]
    )
    assert rc1 == rc20 == 1 and twenty <= 2 * one, (one, twenty)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the server at {closed}" in lines[0] and "20 input(s) skipped" in lines[0]
    assert out.count("skipped") == 21 and "0/20 ok, 20 skipped" in out  # 20 rows + the total line
    with socket.socket() as hung:  # accepts TCP, never speaks
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        silent = f"127.0.0.1:{hung.getsockname()[1]}"
        args = [
            str(bundles.edge),
            "--trust-key",
            str(bundles.trust_key),
            "--server",
            silent,
            "--timeout",
            "3",
            "--json",
            *paths,
        ]
        rc, elapsed, out, err = _timed_infer(capsys, args)
    report = json.loads(out)
    assert rc == 1 and elapsed <= 1.5 * 3, elapsed
    assert f"no reply from {silent} within the 3 s deadline" in err and len(err.strip().splitlines()) == 1
    assert all(r["error"].startswith("skipped") for r in report["results"]) and len(report["results"]) == 20


def test_target_and_bundle_path_errors_say_what_to_pass(bundles, tmp_path, capsys):
    for bad, words in (
        ("127.0.0.1:99999", "the port '99999' is not in 1-65535"),
        ("::1:8001", "[::1]:8001"),
        ("cloud.example", "HOST:PORT"),
        ("http://cloud.example:80", "HOST:PORT"),
    ):
        assert (
            main(["edge", "infer", str(bundles.edge), "--trust-key", str(bundles.trust_key), "--server", bad, "x.png"])
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "65535" not in err.replace("1-65535", ""), err
    for good in ("[::1]:8001", "dns:///localhost:8001", "localhost:1"):
        assert ClientConfig(target=good).target == good
    device = tmp_path / "device"
    from privsplit.edge.flash import flash

    flash(bundles.edge, device, trust_key=bundles.trust_key)
    missing = "pass OUT/edge (from `privsplit export`) or DEVICE/current"
    for path, words in ((device, f"pass {device / 'current'}"), (tmp_path / "nope", missing)):
        assert main(["edge", "infer", str(path), "--server", "127.0.0.1:8001", "x.png"]) == 3
        err = capsys.readouterr().err
        assert words in err and "re-export" not in err and "OUT/cloud" not in err, err


def test_a_bearer_token_never_travels_in_plaintext_unless_asked(bundles, tmp_path, capsys):
    with pytest.raises(Exception, match="refusing to send the bearer token in plaintext to 10.1.2.3:8001: pass --tls"):
        ClientConfig(target="10.1.2.3:8001", token="t0k")
    assert ClientConfig(target="10.1.2.3:8001", token="t0k", insecure=True).insecure
    for loopback in ("127.0.0.1:8001", "[::1]:8001", "localhost:8001"):
        ClientConfig(target=loopback, token="t0k")
    with pytest.raises(Exception, match="refusing to accept bearer tokens in plaintext on 0.0.0.0"):
        ServeConfig(bundle=bundles.cloud, host="0.0.0.0", token="t0k")
    assert ServeConfig(bundle=bundles.cloud, host="0.0.0.0", token="t0k", insecure=True).insecure
    token = tmp_path / "token.txt"
    token.write_text("t0k\n")
    args = [
        "edge",
        "infer",
        str(bundles.edge),
        "--trust-key",
        str(bundles.trust_key),
        "--server",
        "10.1.2.3:8001",
        "--token-file",
        str(token),
        "x.png",
    ]
    assert main(args) == 2
    assert "refusing to send the bearer token in plaintext" in capsys.readouterr().err
    assert main(["serve", str(bundles.cloud), "--host", "0.0.0.0", "--port", "0", "--token-file", str(token)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--insecure" in err and "--tls-cert" in err
    # the override: a plaintext server on all interfaces with a token, reached with --insecure by a non-loopback name
    srv, port = create_server(ServeConfig(bundle=bundles.cloud, host="0.0.0.0", port=0, token="t0k", insecure=True))
    with srv:
        by_name = ClientConfig(target=f"{socket.gethostname()}:{port}", token="t0k", insecure=True, retry=FAST)
        with EdgeClient(by_name) as client:
            assert client.server_ready()


def _readme_tls_commands() -> list[str]:
    """The certificate and token commands of the TLS walk-through (docs/guides/serve.md), as written."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "serve.md").read_text()
    begin, end = "<!-- tls-walkthrough:begin -->", "<!-- tls-walkthrough:end -->"
    assert begin in text and end in text, "docs/guides/serve.md lost the TLS walk-through markers"
    block = text.split(begin, 1)[1].split(end, 1)[0]
    commands = [line for line in block.splitlines() if line.startswith(("openssl ", "head "))]
    assert len(commands) == 4, commands
    return commands


def test_readme_tls_walkthrough_works_as_written(bundles, pipe, images, tmp_path, capsys):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    work = tmp_path / "tls"
    work.mkdir()
    for command in _readme_tls_commands():
        proc = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (command, proc.stderr)
    token = (work / "token.txt").read_text().strip()
    tls_files = TlsConfig(cert=work / "server.crt", key=work / "server.key")
    config = ServeConfig(bundle=bundles.cloud, port=0, token=token, tls=tls_files)
    srv, port = create_server(config)
    tls = ClientTls(ca=work / "ca.crt", server_name="cloud.example")  # the README's host name, reached by address
    with srv:
        with EdgeClient(ClientConfig(target=f"127.0.0.1:{port}", tls=tls, token=token, retry=FAST)) as client:
            report = infer_inputs(pipe, client, images[0][:3])
            assert report.failed == 0 and client.retries == 0
        with EdgeClient(ClientConfig(target=f"127.0.0.1:{port}", tls=tls, retry=FAST)) as client:
            with pytest.raises(ProtocolError, match="missing 'authorization") as err:
                client.server_ready()
            assert err.value.code is Code.UNAUTHENTICATED
        rc = main(
            [
                "edge",
                "infer",
                str(bundles.edge),
                "--trust-key",
                str(bundles.trust_key),
                "--server",
                f"127.0.0.1:{port}",
                "--tls-ca",
                str(work / "ca.crt"),
                "--tls-server-name",
                "cloud.example",
                "--token-file",
                str(work / "token.txt"),
                str(write_pngs(images[0][:1], tmp_path / "img")[0]),
            ]
        )
        assert rc == 0, capsys.readouterr()
        # a CA that did not sign the server certificate: reported as a handshake failure, not a bare UNAVAILABLE
        other = tmp_path / "other"
        other.mkdir()
        make_ca = _readme_tls_commands()[0]
        subprocess.run(["bash", "-c", make_ca], cwd=other, check=True, capture_output=True, timeout=60)
        wrong = ClientTls(ca=other / "ca.crt", server_name="cloud.example")
        with EdgeClient(ClientConfig(target=f"127.0.0.1:{port}", tls=wrong, token=token, retry=FAST)) as client:
            handshake = rf"TLS handshake with 127.0.0.1:{port} failed: .*CERTIFICATE_VERIFY_FAILED.*check --tls-ca"
            with pytest.raises(ServerUnavailable, match=handshake):
                client.server_ready()
            assert client.retries == 0  # a certificate problem is not retried
    # the walk-through's old Ed25519 keys: refused at start with one line, not UNAVAILABLE on every request
    ed = tmp_path / "ed"
    ed.mkdir()
    for command in _readme_tls_commands()[:3]:
        command = command.replace("-newkey ec -pkeyopt ec_paramgen_curve:prime256v1", "-newkey ed25519")
        subprocess.run(["bash", "-c", command], cwd=ed, check=True, capture_output=True, timeout=60)
    with pytest.raises(Exception, match="gRPC cannot serve a Ed25519 certificate.*prime256v1"):
        create_server(
            ServeConfig(bundle=bundles.cloud, port=0, tls=TlsConfig(cert=ed / "server.crt", key=ed / "server.key"))
        )
    rc = main(
        [
            "serve",
            str(bundles.cloud),
            "--port",
            "0",
            "--tls-cert",
            str(ed / "server.crt"),
            "--tls-key",
            str(ed / "server.key"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "cannot serve a Ed25519 certificate" in err, err


def test_a_stream_that_drops_after_some_replies_is_resumed_with_one_reply_per_request(server, pipe, images):
    """The real servicer behind a stream that breaks (UNAVAILABLE) after 3 replies, twice: the client re-sends
    the unanswered requests on a new stream and yields exactly one reply per request, in order. Delivery to
    the server is at-least-once: requests in flight when the stream broke may be processed twice."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from privsplit.cloud.servicer import InferenceServicer, add_to_server

    received: list[str] = []
    drops = {"left": 2}

    class Dropping(InferenceServicer):
        def ModelStreamInfer(self, request_iterator, context):  # noqa: N802 (gRPC's naming)
            def counted():
                for request in request_iterator:
                    received.append(request.id)
                    yield request

            for n, reply in enumerate(super().ModelStreamInfer(counted(), context)):
                if n == 3 and drops["left"]:
                    drops["left"] -= 1
                    context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
                yield reply

    flaky = grpc.server(ThreadPoolExecutor(8))
    add_to_server(
        Dropping(
            spec=server.spec,
            batcher=server.batcher,
            limits=server.config.batch,
            metrics=server.metrics,
            state=server.state,
        ),
        flaky,
    )
    port = flaky.add_insecure_port("127.0.0.1:0")
    flaky.start()
    imgs = images[0][:12]
    try:
        with EdgeClient(ClientConfig(target=f"127.0.0.1:{port}", retry=FAST)) as client:
            replies = list(client.stream((f"r{i}", _one_request(pipe, imgs[i : i + 1], f"r{i}")) for i in range(12)))
            assert client.retries == 2
    finally:
        flaky.stop(0)
    assert [r.request_id for r in replies] == [f"r{i}" for i in range(12)] and all(r.ok for r in replies)
    np.testing.assert_array_equal([int(r.prediction.label[0]) for r in replies], _expected(server, pipe, imgs))
    assert sorted(set(received)) == sorted(f"r{i}" for i in range(12))
    assert len(received) > 12  # at-least-once: the unanswered requests of each broken stream were sent again


def _one_request(pipe, pixels, rid: str) -> bytes:
    wire = pipe.encode(pixels)[1]
    request = features_request(
        wire.data, encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point, request_id=rid
    )
    return request.to_proto().SerializeToString()
