"""The device pipeline on real exported bundles: backends, preprocessing as training did it, features
against PyTorch, the channel noise, bundle verification and per-input errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_edge_support import holdout, rewrite_bundle, write_pngs

from privsplit.bundle import BundleKind, TensorSpec, load_bundle
from privsplit.edge.pipeline import EdgePipeline, select_encoder
from privsplit.edge.preprocess import Preprocessor
from privsplit.edge.runtimes import RuntimeName, available_runtimes, choose_runtime, import_backend
from privsplit.errors import BundleError, ConfigError, MissingDependencyError


@pytest.fixture(scope="module")
def reference(bundles):
    """Holdout images, labels and the torch encoder's noise-free features (N, C, h, w)."""
    import torch

    from privsplit.run import RunFolder

    images, labels = holdout(bundles.run, 96)
    model = RunFolder(bundles.run).load_split_model().eval()
    with torch.no_grad():
        feats = model.encoder(model.preprocess(images)).numpy()
    return images, labels, feats


def test_backends_are_registered_and_missing_ones_name_their_package():
    installed = available_runtimes()
    assert RuntimeName.LITERT in installed and RuntimeName.ONNXRUNTIME in installed
    if RuntimeName.TFLITE_RUNTIME not in installed:
        with pytest.raises(MissingDependencyError, match="tflite-runtime") as err:
            import_backend(RuntimeName.TFLITE_RUNTIME)
        assert "pip install" in str(err.value)
    assert choose_runtime("tflite") is RuntimeName.LITERT
    assert choose_runtime("onnx") is RuntimeName.ONNXRUNTIME
    with pytest.raises(ConfigError, match="runs onnx artefacts"):
        choose_runtime("tflite", "onnxruntime")
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'"):
        choose_runtime("onnx", "tensorrt")


def test_encoder_selection_follows_the_bundle_and_the_runtime(bundles):
    bundle = load_bundle(bundles.edge, kind=BundleKind.EDGE)
    assert bundle.manifest["default_encoder"] == "tflite-int8"
    assert select_encoder(bundle, encoder=None, runtime=None) == ("tflite-int8", RuntimeName.LITERT)
    assert select_encoder(bundle, encoder=None, runtime="onnxruntime") == ("onnx-fp32", RuntimeName.ONNXRUNTIME)
    with pytest.raises(ConfigError, match="no encoder 'tflite-fp16'"):
        select_encoder(bundle, encoder="tflite-fp16", runtime=None)


@pytest.mark.parametrize("encoder", ["tflite-int8", "onnx-fp32"])
def test_wire_features_match_pytorch_and_classify_like_it(bundles, reference, encoder):
    import onnxruntime as ort

    images, labels, torch_feats = reference
    pipe = EdgePipeline.open(bundles.edge, trust_key=bundles.trust_key, encoder=encoder, threads=1, seed=0)
    assert pipe.bundle.verified_key_id == bundles.key_id
    items, wire = pipe.encode(images)
    assert (
        all(it.ok for it in items) and wire.data.dtype == np.int8 and wire.data.shape == (len(images), *pipe.wire.shape)
    )
    expected = pipe.wire.quantize(torch_feats)
    step_off = np.abs(wire.data.astype(np.int16) - expected.astype(np.int16))
    got, ref = wire.dequantize().reshape(len(images), -1), torch_feats.reshape(len(images), -1)
    cosine = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    if encoder == "onnx-fp32":  # float artefact: only wire rounding at the boundaries may differ
        assert step_off.max() <= 1 and (step_off == 0).mean() > 0.99
    else:  # full int8 encoder
        assert cosine.min() > 0.99, cosine.min()
    server = ort.InferenceSession(str(bundles.cloud / "server.onnx"), providers=["CPUExecutionProvider"])
    acc_edge = (server.run(None, {"features": wire.dequantize()})[0].argmax(1) == labels).mean()
    acc_torch = (server.run(None, {"features": pipe.wire.dequantize(expected)})[0].argmax(1) == labels).mean()
    assert acc_torch > 0.8 and abs(acc_edge - acc_torch) <= 0.03, (acc_edge, acc_torch)


def test_preprocessing_is_the_training_loaders(bundles, reference, tmp_path):
    from PIL import Image

    from privsplit.data.images import read_image

    images = reference[0][:8]
    pipe = EdgePipeline.open(bundles.edge, encoder="onnx-fp32")
    pre = pipe.preprocessor
    paths = write_pngs(images, tmp_path / "png")
    decoded = np.stack([pre.decode(p) for p in paths])
    np.testing.assert_array_equal(decoded, images)
    # a larger, non-square colour photo: centre crop + bilinear resize + luma, exactly as the loaders do
    rng = np.random.default_rng(0)
    big = (rng.random((90, 130, 3)) * 255).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    size, channels = pre.spec.size, pre.spec.channels
    loader = read_image(tmp_path / "big.png", size=size, channels=channels)
    np.testing.assert_array_equal(pre.decode(tmp_path / "big.png"), loader)
    np.testing.assert_array_equal(pre.frame(big), loader)  # camera frame: same rule, no file
    np.testing.assert_array_equal(pre.frame(big[..., ::-1].copy(), bgr=True), loader)
    np.testing.assert_array_equal(pre.frames(big[None]), loader[None])
    # the int8 input fast path equals the manifest's formula for every pixel value
    int8 = EdgePipeline.open(bundles.edge, encoder="tflite-int8").preprocessor
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(2, axis=1).repeat(2, axis=2)
    assert int8._identity_int8
    np.testing.assert_array_equal(int8.to_input(pixels), int8.input.quantize(int8.normalise(pixels)))
    generic = Preprocessor(
        spec=int8.spec, input=TensorSpec("int8", int8.input.shape, scale=int8.input.scale * 1.5, zero_point=-128)
    )
    assert not generic._identity_int8
    np.testing.assert_array_equal(generic.to_input(pixels), generic.input.quantize(pixels.astype(np.float32) / 255.0))


def test_channel_noise_is_added_on_the_device_with_the_manifest_sigma(bundles, reference):
    images = reference[0][:64]
    clean = EdgePipeline.open(bundles.edge, encoder="onnx-fp32").encode(images)[1].dequantize()
    runs = [EdgePipeline.open(bundles.noisy, encoder="onnx-fp32", seed=s).encode(images)[1] for s in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0].data, runs[1].data)  # seeded: reproducible
    assert (runs[0].data != runs[2].data).mean() > 0.5  # another seed: other noise
    diff = runs[0].dequantize() - clean
    inside = np.abs(runs[0].data.astype(np.int16)) < 127  # away from the int8 clipping range
    assert abs(diff[inside].std() - 0.5) < 0.05 and abs(diff[inside].mean()) < 0.02
    entropy = [EdgePipeline.open(bundles.noisy, encoder="onnx-fp32").encode(images[:4])[1].data for _ in range(2)]
    assert (entropy[0] != entropy[1]).any()  # no seed: fresh OS entropy per pipeline
    off = EdgePipeline.open(bundles.noisy, encoder="onnx-fp32", noise=False).encode(images)[1].dequantize()
    np.testing.assert_array_equal(off, clean)


def test_the_bundle_is_verified_before_anything_loads(bundles, tmp_path):
    copy = tmp_path / "edge"
    shutil.copytree(bundles.edge, copy)
    with pytest.raises(BundleError, match="signed by key"):
        EdgePipeline.open(copy, trust_key=bundles.other_key)
    with pytest.raises(BundleError, match="cloud bundle"):
        EdgePipeline.open(bundles.cloud)
    target = copy / "encoder-tflite-int8.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="encoder-tflite-int8.tflite is tampered"):
        EdgePipeline.open(copy)
    target.write_bytes(bytes(data[:100]))
    with pytest.raises(BundleError, match="truncated"):
        EdgePipeline.open(copy, encoder="onnx-fp32")


def test_a_manifest_that_misdescribes_its_artefact_is_refused(bundles, tmp_path):
    manifest = json.loads((bundles.edge / "manifest.json").read_text())
    encoders = json.loads(json.dumps(manifest["encoders"]))
    encoders["tflite-int8"]["output"]["scale"] *= 2
    lying = rewrite_bundle(bundles.edge, tmp_path / "lying", version="lying", encoders=encoders)
    with pytest.raises(BundleError, match="output quantization"):
        EdgePipeline.open(lying, encoder="tflite-int8")
    EdgePipeline.open(lying, encoder="onnx-fp32")  # the other encoder is described truthfully


def test_every_input_gets_pixels_or_its_error(bundles, reference, tmp_path):
    paths = write_pngs(reference[0][:3], tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "empty").mkdir()
    pipe = EdgePipeline.open(bundles.edge)
    items, wire = pipe.encode([tmp_path / "imgs", tmp_path / "missing.png", tmp_path / "empty", paths[0]])
    assert [it.ok for it in items] == [False, True, True, True, False, False, True]
    assert "broken.jpg" in items[0].error and "cannot decode" in items[0].error
    assert "not found" in items[4].error and "holds no image files" in items[5].error
    assert wire.data.shape[0] == 4
    np.testing.assert_array_equal(wire.data[0], wire.data[3])  # the same image twice (noise sigma is 0 here)
    bad = pipe.items(np.zeros((2, 5, 5), np.float32))
    assert len(bad) == 1 and "uint8" in bad[0].error
