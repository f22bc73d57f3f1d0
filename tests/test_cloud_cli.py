"""`privsplit serve` as a real process (SIGTERM drain loses no request) and `privsplit bench cloud`."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from test_cloud_support import REPO, wire_features

from privsplit.proto import InferResponse, Prediction, StreamInferResponse, features_request
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

TOKEN = "cli-test-token"


@pytest.fixture(scope="module")
def wire(bundles, digits_run):
    return wire_features(bundles, digits_run, count=64)


def _cli(*args):
    return [sys.executable, "-m", "privsplit.cli.main", *map(str, args)]


class Served:
    def __init__(self, args):
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.lines: list[str] = []
        self.port = self.metrics_port = None
        deadline = time.time() + 90
        while time.time() < deadline and self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
        if self.port is None:
            self.proc.kill()
            raise AssertionError("server did not start:\n" + "".join(self.lines) + self.proc.stderr.read())
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def finish(self, timeout=60) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return code


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` (something the test can observe) instead of sleeping a guessed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_serve_drains_on_sigterm_without_losing_requests(bundles, wire, token_file, tmp_path):
    served = Served(
        _cli(
            "serve",
            bundles.cloud,
            "--port",
            0,
            "--max-batch",
            8,
            "--token-file",
            token_file,
            "--trust-key",
            bundles.trust_key,
            "--metrics-port",
            0,
            "--grace",
            30,
        )
    )
    assert any("model 'privsplit'" in line and "purifier on" in line for line in served.lines)
    md = (("authorization", f"Bearer {TOKEN}"),)
    channel = grpc.insecure_channel(f"127.0.0.1:{served.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    small = features_request(
        wire.features[:2], encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point
    )
    assert len(stub.ModelInfer(small.to_proto(), metadata=md, timeout=30).outputs) == 2

    # `privsplit bench cloud` against it (a short sweep, unary and streaming)
    out = tmp_path / "bench.json"
    for extra in ((), ("--stream",)):
        bench = subprocess.run(
            _cli(
                "bench",
                "cloud",
                "--target",
                f"127.0.0.1:{served.port}",
                "--bundle",
                bundles.cloud,
                "--concurrency",
                "1,4",
                "--duration",
                0.6,
                "--warmup",
                0.2,
                "--token-file",
                token_file,
                "--json",
                out,
                *extra,
            ),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert bench.returncode == 0, bench.stderr
        result = json.loads(out.read_text())
        assert [p["concurrency"] for p in result["points"]] == [1, 4] and result["spec"]["stream"] == bool(extra)
        assert all(p["requests"] > 0 and p["errors"] == 0 and p["server_compute_us_p50"] > 0 for p in result["points"])
        assert "p99 ms" in bench.stdout

    # In flight at SIGTERM: 4 open streams (they keep sending after the signal) and a burst of large unary
    # requests queued behind each other (64 rows each, batches of at most 8 rows: each runs alone).
    big = features_request(
        np.repeat(wire.features[:8], 8, axis=0),
        encoder_hash=wire.encoder_hash,
        scale=wire.scale,
        zero_point=wire.zero_point,
    ).to_proto()
    sent_after_signal = threading.Event()
    streams_out: list[list] = [[] for _ in range(4)]

    def stream_worker(k):
        q: queue.Queue = queue.Queue()

        def requests():
            for i in range(40):
                if i == 20:
                    q.get(timeout=30)  # wait for the signal before sending the second half
                yield features_request(
                    wire.features[i : i + 1],
                    encoder_hash=wire.encoder_hash,
                    scale=wire.scale,
                    zero_point=wire.zero_point,
                    request_id=f"{k}-{i}",
                ).to_proto()

        def release():
            sent_after_signal.wait(30)
            q.put(True)

        threading.Thread(target=release, daemon=True).start()
        for reply in stub.ModelStreamInfer(requests(), metadata=md, timeout=60):
            streams_out[k].append(StreamInferResponse.from_proto(reply))

    with ThreadPoolExecutor(24) as pool:
        stream_futures = [pool.submit(stream_worker, k) for k in range(4)]
        unary_futures = [pool.submit(stub.ModelInfer, big, metadata=md, timeout=60) for _ in range(16)]
        _wait_for(lambda: all(streams_out), "every stream's first reply")  # the streams are open on the server
        served.proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: any("SIGTERM: draining" in line for line in served.lines), "the server to start draining")
        sent_after_signal.set()  # the streams' second halves are sent while the server drains
        unary = [f.result() for f in unary_futures]
        for f in stream_futures:
            f.result()
        # new calls while draining: answered while the server still accepts (it takes what reached it before
        # the signal first; a plain gRPC stop would CANCEL those), then refused with UNAVAILABLE, never lost
        answered_while_draining, refused = 0, None
        deadline = time.monotonic() + 30
        while refused is None and time.monotonic() < deadline:
            try:
                stub.ModelInfer(small.to_proto(), metadata=md, timeout=5)
                answered_while_draining += 1
                time.sleep(0.05)
            except grpc.RpcError as exc:
                refused = exc
    assert served.finish() == 0, "".join(served.lines)
    assert all(Prediction.from_response(InferResponse.from_proto(r)).label.shape == (64,) for r in unary)
    for k, replies in enumerate(streams_out):
        assert [r.response.id for r in replies] == [f"{k}-{i}" for i in range(40)]
        assert all(r.error_message == "" for r in replies)
    assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE, answered_while_draining
    log = "".join(served.lines)
    assert "SIGTERM: draining" in log and "drained; bye" in log
    channel.close()


def test_serve_refuses_an_untrusted_bundle_and_bad_options(bundles, tmp_path):
    proc = subprocess.run(
        _cli("serve", bundles.cloud, "--port", 0, "--trust-key", bundles.other_key),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 3 and "signed by key" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run(
        _cli("serve", bundles.cloud, "--tls-cert", tmp_path / "c.pem"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "--tls-cert and --tls-key go together" in proc.stderr
    empty = tmp_path / "token"
    empty.write_text("\n")
    proc = subprocess.run(
        _cli("serve", bundles.cloud, "--token-file", empty), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 2 and "must hold one token" in proc.stderr
    proc = subprocess.run(
        _cli("bench", "cloud", "--target", "127.0.0.1:1"), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 2 and "pass --bundle" in proc.stderr


def test_cli_modules_import_light():
    code = """
import argparse, sys
from privsplit.cli import bench, serve
parser = argparse.ArgumentParser()
sub = parser.add_subparsers()
serve.register(sub)
bench.register(sub)
args = parser.parse_args(["bench", "cloud", "--target", "h:1", "--concurrency", "1,8,32", "--stream"])
assert args.concurrency == (1, 8, 32) and args.stream
heavy = sorted(m for m in ("torch", "grpc", "onnxruntime", "google.protobuf") if m in sys.modules)
assert not heavy, heavy
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    bad = subprocess.run(
        _cli("bench", "cloud", "--target", "h:1", "--concurrency", "0,8"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "give integers >= 1" in bad.stderr
