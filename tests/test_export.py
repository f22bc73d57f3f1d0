"""Export: real conversions of a small trained digits encoder to all six formats, parity, signed bundles.

One module-scoped export (train ~30 s, convert + parity + a small leakage probe ~60 s) feeds every
test; the bundles are then read back the way a device and the cloud will: through the manifest only.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from privsplit.bundle import BundleKind, load_bundle
from privsplit.cli.main import main
from privsplit.errors import BundleError, ConfigError
from privsplit.export.formats import ALL_FORMATS, ExportFormat, parse_formats
from privsplit.export.parity import ParityReport

pytestmark = pytest.mark.slow

REQUIRED = (
    "max_abs_err",
    "cosine",
    "task_accuracy",
    "task_accuracy_torch",
    "attribute_balanced_accuracy",
    "reconstruction_ssim",
    "size_bytes",
    "passed",
    "reason",
)


def _add_purifier(run) -> None:
    """A real Purifier module (seeded init, BatchNorm statistics from the model's reference probabilities)
    saved into the run, so the cloud bundle exports one. Its training is the purifier issue's business."""
    import torch

    from privsplit.data import Part
    from privsplit.models.purifier import Purifier, PurifierConfig, save_purifier

    model, data, split = run.load_split_model(), run.dataset(), run.split()
    with torch.no_grad():
        probs = torch.softmax(model(model.preprocess(data.images[split[Part.REFERENCE]])), dim=1)
        purifier = Purifier(PurifierConfig(num_classes=10))
        purifier.train()
        for _ in range(5):
            purifier(probs)
    save_purifier(run, purifier.eval(), training={"note": "test purifier: seeded init, BatchNorm stats only"})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch

    from privsplit.export.pipeline import export_run
    from privsplit.export.signing import generate_keys
    from privsplit.probes.feature_spec import AttributeAttacker, FeatureProbeSpec
    from privsplit.train import TrainConfig, train_run

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("export")
    config = TrainConfig(
        epochs=5, adv_weight=0.0, noise_sigma=0.5, feature_channels=8, width=16, head_finetune_epochs=0, batch_size=64
    )
    run = train_run("digits", root / "run", config=config, progress=False)
    _add_purifier(run)
    keys = generate_keys(root / "keys" / "signer")
    other = generate_keys(root / "keys" / "other")
    probe = FeatureProbeSpec(
        attackers=(AttributeAttacker.LOGISTIC,),
        epochs=2,
        reconstruction_epochs=2,
        patience=2,
        max_attacker=150,
        max_holdout=60,
    )
    result = export_run(
        run,
        root / "out",
        formats=ALL_FORMATS,
        calibration=128,
        sign_key=keys.private,
        tolerance=0.01,
        probe_spec=probe,
        probe_formats=(ExportFormat.TFLITE_INT8,),
        progress=False,
        max_excess=None,  # parity is under test here; this unprotected run leaks slant (tests/test_export_gate.py)
    )
    return {"run": run, "result": result, "keys": keys, "other": other, "root": root, "probe": probe}


def test_every_format_converts_and_passes_parity(exported):
    report = exported["result"].parity
    data = json.loads((exported["root"] / "out" / "parity.json").read_text())
    assert set(data["formats"]) == {f.value for f in ALL_FORMATS}
    edge = exported["result"].edge
    for name, row in data["formats"].items():
        assert set(REQUIRED) <= set(row), name
        assert row["passed"] and row["reason"] == "", (name, row["reason"])
        assert row["size_bytes"] == edge.file(edge.manifest["encoders"][name]["file"]).stat().st_size, name
        assert row["task_accuracy_torch"] - row["task_accuracy"] <= 0.01
    assert report.reference.task_accuracy > 0.85  # a trained model, not chance (0.1)
    for fmt in (ExportFormat.TFLITE_FP32, ExportFormat.ONNX_FP32):
        assert report.format(fmt.value).max_abs_err < 1e-4
    assert report.format("tflite-fp16").cosine > 0.9999
    for fmt in ("tflite-int8", "onnx-int8", "tflite-dynamic"):
        row = report.format(fmt)
        assert row.cosine > 0.99 and row.max_abs_err > 1e-4  # quantized for real, and close
    assert report.format("tflite-int8").size_bytes < 0.5 * report.format("tflite-fp32").size_bytes
    assert report.format("onnx-int8").size_bytes < 0.6 * report.format("onnx-fp32").size_bytes
    assert ParityReport.load(exported["root"] / "out" / "parity.json") == report


def test_leakage_probe_runs_on_the_artefact(exported):
    report = exported["result"].parity
    ref, int8 = report.reference, report.format("tflite-int8")
    assert report.probe == exported["probe"].to_json()  # the spec it ran with, recorded
    assert ref.reconstruction_ssim > ref.reconstruction_baseline_ssim  # the decoder learns something
    assert abs(int8.reconstruction_ssim - ref.reconstruction_ssim) < 0.1
    assert ref.attribute_balanced_accuracy is None  # digits has no private attribute
    assert report.format("onnx-fp32").reconstruction_ssim is None  # not in probe_formats


def test_tflite_io_dtypes_and_layout(exported):
    from ai_edge_litert.interpreter import Interpreter

    edge = exported["result"].edge
    for fmt in ("tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8"):
        interp = Interpreter(model_path=str(edge.file(f"encoder-{fmt}.tflite")))
        (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
        dtype = np.int8 if fmt == "tflite-int8" else np.float32
        assert inp["dtype"] == dtype and out["dtype"] == dtype, fmt
        assert list(inp["shape"]) == [1, 32, 32, 1] and list(out["shape"]) == [1, 8, 8, 8], fmt  # NHWC
    spec = edge.manifest["encoders"]["tflite-int8"]["input"]
    assert spec["dtype"] == "int8" and spec["zero_point"] == -128 and abs(spec["scale"] - 1 / 255) < 1e-9


def test_onnx_int8_is_per_channel_qdq(exported):
    import onnx

    edge = exported["result"].edge
    model = onnx.load(str(edge.file("encoder-onnx-int8.onnx")))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    int8_weights = [a for a in inits.values() if a.dtype == np.int8 and a.ndim == 4]
    uint8_zero_points = [a for a in inits.values() if a.dtype == np.uint8]
    assert int8_weights and uint8_zero_points
    # reduce_range: 7-bit weights, so the u8s8 QLinearConv of x86 without VNNI cannot saturate (onnx_export)
    assert all(np.abs(w.astype(np.int32)).max() <= 64 for w in int8_weights)
    per_channel = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].dtype == np.int8
        and inits[n.input[1]].size > 1
    ]
    assert per_channel
    for fmt in ("encoder-onnx-fp32.onnx", "encoder-onnx-int8.onnx"):
        assert not list(edge.root.glob(f"{fmt}.data"))  # weights inside the file


def test_bundles_follow_the_contract(exported):
    result = exported["result"]
    edge = load_bundle(result.edge.root, trust_key=exported["keys"].public, kind="edge")
    cloud = load_bundle(result.cloud.root, trust_key=exported["keys"].public, kind=BundleKind.CLOUD)
    assert edge.version == cloud.version and edge.verified_key_id == exported["keys"].key_id
    m = edge.manifest
    assert m["schema_version"] == 1 and m["classes"] == [str(d) for d in range(10)]
    assert (
        m["features"]["shape"] == [8, 8, 8] and m["features"]["dtype"] == "int8" and m["features"]["noise_sigma"] == 0.5
    )
    assert set(m["preprocess"]) >= {"size", "channels", "mean", "std", "channel_order", "layout"}
    assert m["preprocess"]["channel_order"] == "L" and m["default_encoder"] == "tflite-int8"
    assert set(m["encoders"]) == {f.value for f in ALL_FORMATS}
    assert sorted(e["sha256"] for e in m["encoders"].values()) == cloud.manifest["accepted_encoder_hashes"]
    assert cloud.manifest["server"] == {"file": "server.onnx", "input": "features", "output": "probs"}
    assert cloud.manifest["purifier"] == {"file": "purifier.onnx", "input": "probs", "output": "purified"}
    assert set(cloud.manifest["files"]) == {"server.onnx", "purifier.onnx"}
    # the bundle's identity on the wire, and the anti-rollback number both manifests carry (issue 27)
    assert cloud.manifest["accepted_manifest_hashes"] == [edge.manifest_sha256]
    assert edge.release == cloud.release > 1_700_000_000  # default: the Unix time of the export
    parity = result.parity.cloud
    assert parity["server"]["max_abs_err"] < 1e-4 and parity["purifier"]["rows_within_atol"] >= 0.99


def test_purifier_onnx_matches_torch(exported):
    """purifier.onnx on the server's probabilities: the label kept, the values the torch purifier's."""
    import onnxruntime as ort
    import torch

    from privsplit.models.purifier import load_purifier

    purifier = load_purifier(exported["run"])
    cloud = exported["result"].cloud
    probs = torch.softmax(3 * torch.randn(500, 10, generator=torch.Generator().manual_seed(1)), dim=1)
    with torch.no_grad():
        ref = purifier(probs).numpy()
    session = ort.InferenceSession(str(cloud.file("purifier.onnx")), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("probs", "purified") and not isinstance(inp.shape[0], int)  # dynamic batch
    got = session.run(None, {"probs": probs.numpy()})[0]
    assert np.array_equal(got.argmax(1), probs.numpy().argmax(1))
    assert np.mean(np.abs(got - ref).max(1) < 1e-4) >= 0.99


def test_manifest_alone_reproduces_the_accuracy(exported):
    """Device + cloud path from the bundles only: preprocess, int8 encoder, noise, wire int8, server.onnx."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from privsplit.data import Part

    run, result = exported["run"], exported["result"]
    edge, cloud = result.edge, result.cloud
    data, split = run.dataset(), run.split()
    images, labels = data.images[split[Part.HOLDOUT]], data.task_labels[split[Part.HOLDOUT]]
    path, in_spec, out_spec = edge.encoder()
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    x = edge.preprocess.apply(images)
    feats = []
    for i in range(len(x)):
        interp.set_tensor(interp.get_input_details()[0]["index"], in_spec.quantize(x[i : i + 1]))
        interp.invoke()
        feats.append(out_spec.dequantize(interp.get_tensor(interp.get_output_details()[0]["index"])))
    z = np.concatenate(feats).transpose(0, 3, 1, 2)
    wire = edge.features
    noisy = z + wire.noise_sigma * np.random.default_rng(5).standard_normal(z.shape).astype(np.float32)
    q = wire.quantize(noisy)
    assert q.dtype == np.int8 and np.mean((q == -128) | (q == 127)) < 0.002  # the wire range covers the noise
    session = ort.InferenceSession(
        str(cloud.file(cloud.manifest["server"]["file"])), providers=["CPUExecutionProvider"]
    )
    probs = session.run(None, {"features": cloud.features.dequantize(q)})[0]
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)  # softmax inside
    accuracy = float((probs.argmax(1) == labels).mean())
    assert accuracy >= result.parity.reference.task_accuracy - 0.02


@pytest.fixture
def bundle_copy(exported, tmp_path):
    target = tmp_path / "edge"
    shutil.copytree(exported["result"].edge.root, target)
    return target


def test_tampered_byte_is_refused(bundle_copy, exported):
    target = bundle_copy / "encoder-tflite-int8.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"encoder-tflite-int8\.tflite is tampered"):
        load_bundle(bundle_copy, trust_key=exported["keys"].public)


def test_dropped_file_and_wrong_key_are_refused(bundle_copy, exported, capsys):
    assert main(["verify", str(bundle_copy), "--trust-key", str(exported["other"].public)]) != 0
    assert "manifest.sig" in capsys.readouterr().err
    (bundle_copy / "encoder-onnx-int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"encoder-onnx-int8\.onnx missing"):
        load_bundle(bundle_copy)
    assert main(["verify", str(bundle_copy)]) != 0
    assert "encoder-onnx-int8.onnx missing" in capsys.readouterr().err


def test_judge_fails_a_format_beyond_tolerance(exported):
    from privsplit.export.pipeline import judge

    row = exported["result"].parity.format("tflite-int8")
    sizes = {"tflite-fp32": exported["result"].parity.format("tflite-fp32").size_bytes}
    worse = replace(row, passed=True, reason="", task_accuracy=row.task_accuracy_torch - 0.02)
    judged = judge(worse, 0.01, sizes)
    assert not judged.passed and "2.00 points below" in judged.reason
    assert judge(replace(worse, task_accuracy=row.task_accuracy_torch - 0.005), 0.01, sizes).passed
    assert judged.size_ratio == pytest.approx(row.size_bytes / sizes["tflite-fp32"], abs=1e-3)


def test_cli_export_prints_the_table(exported, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "export",
            str(exported["run"].path),
            "--out",
            str(out),
            "--formats",
            "tflite-int8,onnx-fp32",
            "--calibration",
            "64",
            "--no-probe",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0 and "tflite-int8" in printed and "shipped" in printed and "pytorch" in printed
    assert set(load_bundle(out / "edge").manifest["encoders"]) == {"tflite-int8", "onnx-fp32"}
    assert not (out / "edge" / "manifest.sig").exists()  # unsigned without --sign-key
    assert (
        main(
            ["export", str(exported["run"].path), "--out", str(out), "--formats", "onnx-fp32", "--no-probe", "--quiet"]
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err


def test_format_parsing():
    assert parse_formats("onnx-int8,tflite-int8,onnx-int8") == (ExportFormat.TFLITE_INT8, ExportFormat.ONNX_INT8)
    assert parse_formats("all") == ALL_FORMATS
    with pytest.raises(ConfigError, match="unknown format 'tflite-int4'"):
        parse_formats("tflite-int4")
