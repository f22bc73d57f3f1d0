"""`privsplit serve --engine kserve`: the cloud bundle in KServe's own ModelServer answers like `privsplit serve`.

KServe pins protobuf<7, so it lives in its own virtualenv (.venv-kserve, created by .ci/run; README "Deploying at
scale"): the KServe server runs as a child process with that environment's python, on free loopback ports. The
official Triton client and `privsplit edge infer` (the CLI, real gRPC) talk to it and to `privsplit serve` on the
same bundle, and must get the same answers.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_cloud_support import REPO, wire_features
from test_edge_support import free_port, holdout, write_pngs

from privsplit.cli.main import main
from privsplit.cloud import ServeConfig, create_server
from privsplit.proto import InferResponse, features_request
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

slow = pytest.mark.slow  # the session's bundles: training + export (~1 min)

KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
TRITON_CHILD = Path(__file__).with_name("kserve_triton_client.py")
CREATE = "python3 -m venv .venv-kserve && .venv-kserve/bin/pip install -e '.[kserve]'"


def _kserve_installed() -> bool:
    if not KSERVE_PYTHON.is_file():
        return False
    probe = subprocess.run([KSERVE_PYTHON, "-c", "import kserve"], capture_output=True, timeout=120)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def kserve_server(bundles, tmp_path_factory):
    """KServe's ModelServer hosting the signed cloud bundle (signature checked with the trust key)."""
    if not _kserve_installed():
        pytest.skip(f"the KServe environment is absent: create it with `{CREATE}` (.ci/run does)")
    port, http_port = free_port(), free_port()
    args = [KSERVE_PYTHON, "-m", "privsplit.cli.main", "serve", bundles.cloud, "--engine", "kserve"]
    args += ["--port", port, "--http-port", http_port, "--trust-key", bundles.trust_key, "--grace", 1]
    log_path = tmp_path_factory.mktemp("kserve") / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen([str(a) for a in args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    ready = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, (
                f"the KServe server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
            try:
                if ready(pb.ServerReadyRequest(), timeout=2).ready:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "the KServe server did not become ready in 120 s"
            time.sleep(0.2)
        yield port
    finally:
        channel.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def own_server(bundles):
    srv, _ = create_server(ServeConfig(bundle=bundles.cloud, port=0, trust_key=bundles.trust_key))
    with srv:
        yield srv


@pytest.fixture(scope="module")
def wire(bundles, digits_run):
    return wire_features(bundles, digits_run, count=16)


def _triton(port: int, wire) -> dict:
    """The official Triton client (tritonclient.grpc, in a child process: its protocol module and ours share
    protobuf's default pool) against ``port``."""
    request = {
        "features": wire.features[:5].tolist(),
        "scale": wire.scale,
        "zero_point": wire.zero_point,
        "encoder_hash": wire.encoder_hash,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(request, fh)
    proc = subprocess.run(
        [sys.executable, str(TRITON_CHILD), f"127.0.0.1:{port}", fh.name], capture_output=True, text=True, timeout=120
    )
    Path(fh.name).unlink(missing_ok=True)
    assert proc.returncode == 0, f"triton client failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@slow
def test_triton_client_gets_the_same_answers_from_kserve(kserve_server, own_server, wire):
    kserve, own = _triton(kserve_server, wire), _triton(own_server.port, wire)
    assert kserve["live"] and kserve["ready"] and kserve["model_ready"]
    # an unknown model: privsplit serve answers "not ready", KServe's own servicer NOT_FOUND (not ours to change)
    assert own["unknown_model_ready"] == {"ok": False}
    assert kserve["unknown_model_ready"]["status"] == "StatusCode.NOT_FOUND"
    # KServe's ModelMetadata has no versions and an empty platform; the tensors are ours
    for side in ("inputs", "outputs"):
        assert kserve["model_metadata"][side] == own["model_metadata"][side]
    assert [t["name"] for t in kserve["model_metadata"]["outputs"]] == ["probs", "label"]
    assert kserve["infer"]["probs"] == own["infer"]["probs"]  # the same onnxruntime graphs on the same bytes
    assert kserve["infer"]["label"] == own["infer"]["label"] and kserve["infer"]["id"] == "triton-1"
    assert int(kserve["infer"]["parameters"]["batch_size"]["int64_param"]) == 5
    assert int(kserve["infer"]["parameters"]["compute_us"]["int64_param"]) > 0
    assert kserve["label_only"] == own["label_only"] and kserve["label_only"]["probs_absent"]
    # refusals come from the same handlers: same status, same message
    assert kserve["bad_hash"] == own["bad_hash"] and kserve["bad_hash"]["status"] == "StatusCode.FAILED_PRECONDITION"
    assert kserve["bad_version"] == own["bad_version"] and kserve["bad_version"]["status"] == "StatusCode.NOT_FOUND"


@slow
def test_tensor_parameters_and_refusals_match_privsplit_serve(kserve_server, own_server, wire):
    """The edge sends scale (a double, which KServe's protocol copy cannot type) on the features tensor."""
    stubs = [
        pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{p}"))
        for p in (kserve_server, own_server.port)
    ]
    request = features_request(
        wire.features, encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point, request_id="r1"
    ).to_proto()
    assert request.inputs[0].parameters["scale"].WhichOneof("parameter_choice") == "double_param"
    replies = [InferResponse.from_proto(s.ModelInfer(request, timeout=30)) for s in stubs]
    for name in ("probs", "label"):
        got, expected = (next(t.data for t in r.outputs if t.name == name) for r in replies)
        np.testing.assert_array_equal(got, expected)
    assert replies[0].id == "r1" and replies[0].model_version == replies[1].model_version

    def refusal(stub, mutate):
        bad = pb.ModelInferRequest()
        bad.CopyFrom(request)
        mutate(bad)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad, timeout=30)
        return err.value.code(), err.value.details()

    for mutate in (
        lambda m: m.inputs[0].parameters.pop("scale"),
        lambda m: m.inputs[0].parameters["scale"].__setattr__("double_param", -1.0),
        lambda m: m.inputs[0].shape.__setitem__(1, 3),
        lambda m: setattr(m, "model_version", "no-such-version"),
    ):
        kserve, own = (refusal(s, mutate) for s in stubs)
        assert kserve == own and kserve[0] in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


@slow
def test_edge_infer_cli_gets_the_same_answers_from_kserve(bundles, kserve_server, own_server, tmp_path, capsys):
    images, labels = holdout(bundles.run, 6)
    write_pngs(images, tmp_path / "imgs")
    outs = []
    for port in (kserve_server, own_server.port):
        rc = main(
            ["edge", "infer", str(bundles.edge), "--trust-key", str(bundles.trust_key)]
            + ["--server", f"127.0.0.1:{port}", str(tmp_path / "imgs"), "--json"]
        )
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and out["failed"] == 0 and len(out["results"]) == 6
        outs.append(out["results"])
    kserve, own = outs
    assert [r["label"] for r in kserve] == [r["label"] for r in own]
    assert [r["probs"] for r in kserve] == [r["probs"] for r in own]
    assert np.mean(np.asarray([r["label"] for r in own]) == labels) > 0.5


def test_kserve_engine_without_kserve_fails_with_one_line(tmp_path):
    """The main environment has no kserve (protobuf 7): one line naming the fix, exit 4."""
    if importlib.util.find_spec("kserve") is not None:
        pytest.skip("kserve is installed in this environment")
    proc = subprocess.run(
        [sys.executable, "-m", "privsplit.cli.main", "serve", str(tmp_path / "cloud"), "--engine", "kserve"]
        + ["--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 4 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "KServe is not installed" in lines[0] and ".venv-kserve" in lines[0]
    assert "pip install -e '.[kserve]'" in lines[0]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--token-file", "token.txt"], "--token-file does not apply to --engine kserve"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "--tls-cert does not apply to --engine kserve"),
        (["--max-batch", "8"], "--max-batch does not apply to --engine kserve"),
        (["--workers", "8"], "--workers does not apply to --engine kserve"),
        (["--port", "0"], "--port must be in [1, 65535] with --engine kserve"),
        (["--port", "8500", "--http-port", "8500"], "--http-port must be in [0, 65535] and differ from --port"),
    ],
)
def test_kserve_engine_refuses_options_it_cannot_honour(tmp_path, extra, words):
    """Options of the own server are refused with one line, never silently ignored (before any import of kserve)."""
    proc = subprocess.run(
        [sys.executable, "-m", "privsplit.cli.main", "serve", str(tmp_path / "cloud"), "--engine", "kserve", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
