"""Shared helpers of the cloud tests (no tests here): real features from the conftest's session
``bundles``, certificates, and the official Triton client run in a child process.

``python tests/test_cloud_support.py triton HOST:PORT REQUEST.json`` runs tritonclient[grpc] calls and
prints their results as JSON. It runs in a child process because tritonclient registers its own
``inference.*`` protobuf messages, which cannot share a process with privsplit's (same names).
"""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, eq=False)
class Wire:
    """Real int8 wire features of holdout images (edge encoder run with onnxruntime) and their labels."""

    features: np.ndarray  # int8 [N, C, h, w]
    labels: np.ndarray
    scale: float
    zero_point: int
    encoder_hash: str


def wire_features(bundles, digits_run: Path, count: int = 64) -> Wire:
    """``count`` holdout digits through the ONNX fp32 encoder of the session's ``bundles`` fixture."""
    import onnxruntime as ort

    from privsplit.bundle import BundleKind, load_bundle
    from privsplit.data import Part
    from privsplit.run import RunFolder

    edge = load_bundle(bundles.edge, kind=BundleKind.EDGE)
    path, in_spec, out_spec = edge.encoder("onnx-fp32")
    run = RunFolder(digits_run)
    data, split = run.dataset(), run.split()
    idx = split[Part.HOLDOUT][:count]
    images = data.images[idx]
    x = edge.preprocess.apply(images)  # float NHWC in the artefact's input convention
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: in_spec.quantize(x)})[0]
    z = np.transpose(out_spec.dequantize(out), (0, 3, 1, 2))  # NHWC -> (C, h, w)
    spec = edge.features
    return Wire(
        features=spec.quantize(z),
        labels=data.task_labels[idx],
        scale=spec.scale,
        zero_point=spec.zero_point,
        encoder_hash=edge.manifest["encoders"]["onnx-fp32"]["sha256"],
    )


# ---- certificates -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def make_certs(folder: Path) -> Certs:
    """A self-signed CA, a server certificate for localhost / 127.0.0.1, a client certificate, and a
    client certificate signed by an unrelated CA."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path):
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def leaf(cn, ca_key, ca_cert, *, server: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = ca("privsplit test CA")
    rogue_ca_key, rogue_ca_cert = ca("rogue CA")
    paths = {}
    for label, (key, cert) in {
        "server": leaf("localhost", ca_key, ca_cert, server=True),
        "client": leaf("edge-device-1", ca_key, ca_cert, server=False),
        "rogue": leaf("edge-device-rogue", rogue_ca_key, rogue_ca_cert, server=False),
    }.items():
        (folder / f"{label}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, folder / f"{label}.key")
        paths[label] = (folder / f"{label}.crt", folder / f"{label}.key")
    (folder / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return Certs(
        ca=folder / "ca.crt",
        server_cert=paths["server"][0],
        server_key=paths["server"][1],
        client_cert=paths["client"][0],
        client_key=paths["client"][1],
        rogue_cert=paths["rogue"][0],
        rogue_key=paths["rogue"][1],
    )


# ---- the official Triton client, in a child process -------------------------------------------------
def run_triton_client(target: str, request: dict, *, timeout: float = 120) -> dict:
    """Run :func:`_triton_main` in a child interpreter; return its JSON output."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(request, fh)
    proc = subprocess.run(
        [sys.executable, __file__, "triton", target, fh.name], capture_output=True, text=True, timeout=timeout
    )
    Path(fh.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise AssertionError(f"triton client failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _triton_main(target: str, request_path: str) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    req = json.loads(Path(request_path).read_text())
    client = grpcclient.InferenceServerClient(url=target)
    out: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(req["model"]),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(req["model"], as_json=True),
    }
    features = np.asarray(req["features"], dtype=np.int8)
    inp = grpcclient.InferInput("features", list(features.shape), "INT8")
    inp.set_data_from_numpy(features)
    # tritonclient has request-level parameters only: the server reads scale / zero_point there too
    params = {"encoder_hash": req["encoder_hash"], "scale": float(req["scale"]), "zero_point": int(req["zero_point"])}
    result = client.infer(req["model"], [inp], parameters=params, request_id="triton-1")
    response = result.get_response(as_json=True)
    out["infer"] = {
        "probs": result.as_numpy("probs").tolist(),
        "label": result.as_numpy("label").tolist(),
        "id": response.get("id"),
        "parameters": response.get("parameters", {}),
    }
    only = client.infer(
        req["model"],
        [inp],
        parameters={**params, "label_only": True},
        outputs=[grpcclient.InferRequestedOutput("label")],
    )
    out["label_only"] = {"label": only.as_numpy("label").tolist(), "probs_absent": only.as_numpy("probs") is None}
    try:
        client.infer(req["model"], [inp], parameters={**params, "encoder_hash": "0" * 64})
        out["bad_hash"] = None
    except InferenceServerException as exc:
        out["bad_hash"] = {"status": exc.status(), "message": exc.message()}
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "triton":
        _triton_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python tests/test_cloud_support.py triton HOST:PORT REQUEST.json")
