"""Bundle format: writing, verifying, signing, and refusing every kind of tampering (torch-free, fast).

Bundles here hold small random files; ``test_export.py`` checks the same on real exported artefacts.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from privsplit.bundle import (
    MANIFEST,
    SIGNATURE,
    BundleKind,
    FeatureSpec,
    PreprocessSpec,
    TensorSpec,
    load_bundle,
)
from privsplit.cli.main import main
from privsplit.errors import BundleError, ConfigError
from privsplit.export.bundle_writer import write_bundle
from privsplit.export.signing import generate_keys, load_private_key

FEATURES = {"shape": [4, 2, 2], "dtype": "int8", "scale": 0.05, "zero_point": -3, "noise_sigma": 1.0}
EDGE_BODY_BASE = {
    "classes": ["no", "yes"],
    "features": FEATURES,
    "preprocess": {
        "size": 8,
        "channels": 3,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "channel_order": "RGB",
        "layout": "NHWC",
    },
    "default_encoder": "tflite-int8",
}


def _make_edge(root: Path, *, key=None, seed: int = 0):
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (root / "encoder-tflite-int8.tflite").write_bytes(rng.bytes(3000))
    (root / "sub").mkdir()
    (root / "sub" / "extra.bin").write_bytes(rng.bytes(100))
    from privsplit.bundle import sha256_file

    spec = {"dtype": "int8", "shape": [1, 8, 8, 3], "scale": 1 / 255, "zero_point": -128, "layout": "NHWC"}
    body = dict(EDGE_BODY_BASE)
    body["encoders"] = {
        "tflite-int8": {
            "file": "encoder-tflite-int8.tflite",
            "sha256": sha256_file(root / "encoder-tflite-int8.tflite"),
            "input": spec,
            "output": {**spec, "shape": [1, 2, 2, 4], "scale": 0.1, "zero_point": 3},
        },
    }
    return write_bundle(root, kind=BundleKind.EDGE, version="v1", body=body, sign_key=key)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return generate_keys(d / "signer"), generate_keys(d / "other")


@pytest.fixture
def signed(tmp_path, keys):
    signer, _ = keys
    return _make_edge(tmp_path / "edge", key=load_private_key(signer.private))


def test_keys_are_written_private_and_not_overwritten(keys):
    signer, other = keys
    assert stat.S_IMODE(signer.private.stat().st_mode) == 0o600
    assert signer.public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert signer.key_id != other.key_id and len(signer.key_id) == 16
    with pytest.raises(ConfigError, match="already exists"):
        generate_keys(signer.private.with_suffix(""))


def test_loose_private_key_is_refused(tmp_path):
    pair = generate_keys(tmp_path / "k")
    os.chmod(pair.private, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(pair.private)


def test_signed_bundle_verifies(signed, keys):
    signer, _ = keys
    b = load_bundle(signed.root, trust_key=signer.public, kind="edge")
    assert b.kind is BundleKind.EDGE and b.version == "v1" and b.signed
    assert b.verified_key_id == signer.key_id
    assert set(b.manifest["files"]) == {"encoder-tflite-int8.tflite", "sub/extra.bin"}
    assert b.manifest["schema_version"] == 1
    path, inp, out = b.encoder()
    assert path.name == "encoder-tflite-int8.tflite" and inp.dtype == "int8" and out.shape == (1, 2, 2, 4)
    assert b.file("sub/extra.bin").is_file()
    with pytest.raises(BundleError, match="not listed"):
        b.file("nope.bin")
    sig = json.loads((signed.root / SIGNATURE).read_text())
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == signer.key_id


def test_wrong_key_is_refused(signed, keys):
    _, other = keys
    with pytest.raises(BundleError, match=r"manifest\.sig.*not by the trusted key"):
        load_bundle(signed.root, trust_key=other.public)


def test_missing_signature_is_refused_when_a_key_is_required(tmp_path, keys):
    signer, _ = keys
    bundle = _make_edge(tmp_path / "edge")  # unsigned
    assert not bundle.signed and bundle.verified_key_id is None
    with pytest.raises(BundleError, match=r"manifest\.sig missing"):
        load_bundle(bundle.root, trust_key=signer.public)


def test_flipped_byte_is_named(signed):
    target = signed.root / "encoder-tflite-int8.tflite"
    data = bytearray(target.read_bytes())
    data[1234] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"encoder-tflite-int8\.tflite is tampered"):
        load_bundle(signed.root)


def test_truncated_and_missing_and_extra_files_are_named(signed):
    target = signed.root / "sub" / "extra.bin"
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(BundleError, match=r"sub/extra\.bin truncated"):
        load_bundle(signed.root)
    target.unlink()
    with pytest.raises(BundleError, match=r"sub/extra\.bin missing"):
        load_bundle(signed.root)


def test_unlisted_file_is_refused(signed):
    (signed.root / "payload.so").write_bytes(b"\x7fELF")
    with pytest.raises(BundleError, match=r"payload\.so is not listed"):
        load_bundle(signed.root)


def test_rewritten_manifest_fails_the_signature(signed, keys):
    """An attacker who swaps a file and rewrites its hash still cannot forge the signature."""
    signer, _ = keys
    root = signed.root
    (root / "sub" / "extra.bin").write_bytes(b"evil")
    manifest = json.loads((root / MANIFEST).read_text())
    from privsplit.bundle import sha256_file

    manifest["files"]["sub/extra.bin"] = {"sha256": sha256_file(root / "sub" / "extra.bin"), "size": 4}
    (root / MANIFEST).write_text(json.dumps(manifest))
    load_bundle(root)  # integrity alone is satisfied: hashes match the rewritten manifest
    with pytest.raises(BundleError, match=r"manifest\.sig: signature does not match"):
        load_bundle(root, trust_key=signer.public)


def test_structural_errors(tmp_path, signed):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "absent")
    with pytest.raises(BundleError, match="is an edge bundle, a cloud bundle was expected"):
        load_bundle(signed.root, kind=BundleKind.CLOUD)
    manifest = json.loads((signed.root / MANIFEST).read_text())
    for change, pattern in (
        ({"schema_version": 2}, "schema_version 2"),
        ({"files": {**manifest["files"], "../escape": {"sha256": "0" * 64, "size": 1}}}, "unsafe file path"),
        ({"default_encoder": "onnx-fp32"}, "default_encoder"),
    ):
        (signed.root / MANIFEST).write_text(json.dumps({**manifest, **change}))
        with pytest.raises(BundleError, match=pattern):
            load_bundle(signed.root)
    (signed.root / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json is not valid JSON"):
        load_bundle(signed.root)


def test_wire_and_tensor_quantization_roundtrip():
    spec = FeatureSpec.from_json(FEATURES)
    z = np.linspace(-10, 10, 2001, dtype=np.float32)
    q = spec.quantize(z)
    assert q.dtype == np.int8 and q.min() == -128 and q.max() == 127  # saturates, never wraps
    inside = (z > (-128 + 3) * 0.05) & (z < (127 + 3) * 0.05)
    assert np.abs(spec.dequantize(q)[inside] - z[inside]).max() <= 0.025 + 1e-6
    t = TensorSpec(dtype="int8", shape=(1, 2, 2, 1), scale=1 / 255, zero_point=-128)
    pixels = np.arange(256, dtype=np.float32) / 255
    assert np.array_equal(t.quantize(pixels).astype(np.int16), np.arange(256) - 128)  # lossless for pixel / 255
    pre = PreprocessSpec(size=2, channels=1, mean=(0.5,), std=(0.25,), channel_order="L")
    assert np.allclose(pre.apply(np.array([[[[255]]]], np.uint8)), 2.0)


def test_verify_cli(signed, keys, capsys):
    signer, other = keys
    assert main(["verify", str(signed.root), "--trust-key", str(signer.public)]) == 0
    assert "signature verified" in capsys.readouterr().out
    assert main(["verify", str(signed.root), "--trust-key", str(other.public)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "manifest.sig" in err
    # without a key the signature cannot be checked: that is a failure, not an "ok" (issue 27)
    assert main(["verify", str(signed.root)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "signature cannot be checked" in err and "--trust-key" in err
    assert main(["verify", str(signed.root), "--allow-unsigned"]) == 0
    captured = capsys.readouterr()
    assert "signature NOT checked" in captured.out and "warning: --allow-unsigned" in captured.err
    (signed.root / "encoder-tflite-int8.tflite").write_bytes(b"x")
    assert main(["verify", str(signed.root), "--trust-key", str(signer.public)]) == 3
    assert "encoder-tflite-int8.tflite truncated" in capsys.readouterr().err


def test_keys_cli(tmp_path, capsys):
    assert main(["keys", "generate", "--out", str(tmp_path / "k")]) == 0
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").is_file()
    assert main(["keys", "generate", "--out", str(tmp_path / "k")]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err


def test_bundle_reader_imports_no_torch():
    code = "import sys, privsplit.bundle; assert 'torch' not in sys.modules and 'privsplit.models' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
