"""Frame-keyed channel noise: the same frame gets the same noise on one device, so averaging exact repeats gains
the operator nothing; other frames, other keys and other devices get independent N(0, 1) draws."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from test_edge_support import holdout, rewrite_bundle

from privsplit.bundle import BundleKind, FeatureSpec, load_bundle
from privsplit.edge.pipeline import EdgePipeline
from privsplit.errors import BundleError, ConfigError
from privsplit.noise_keying import (
    NoiseKeying,
    device_noise_key,
    frame_keyed_normal,
    read_or_create_key,
    stand_in_key,
)
from privsplit.probes.frames import Frames, averaged_encoder

KEY = bytes(range(32))


def test_the_same_frame_and_key_draw_the_same_noise_and_anything_else_draws_anew():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    a = frame_keyed_normal(KEY, frames, (4, 2, 2))
    np.testing.assert_array_equal(a, frame_keyed_normal(KEY, frames, (4, 2, 2)))
    assert a.shape == (6, 4, 2, 2) and a.dtype == np.float32
    assert not np.allclose(a[0], a[1])  # another frame
    assert not np.allclose(a, frame_keyed_normal(bytes(32), frames, (4, 2, 2)))  # another device
    moved = frames.copy()
    moved[0, 0, 0, 0] ^= 1  # one grey level in one pixel
    b = frame_keyed_normal(KEY, moved, (4, 2, 2))
    assert not np.allclose(a[0], b[0]) and np.array_equal(a[1:], b[1:])


def test_keyed_noise_is_standard_normal_and_uncorrelated_across_frames():
    frames = np.random.default_rng(1).integers(0, 256, (4000, 4, 4, 1), dtype=np.uint8)
    draws = frame_keyed_normal(KEY, frames, (8,))
    assert abs(draws.mean()) < 0.02 and abs(draws.std() - 1) < 0.02
    corr = np.corrcoef(draws[:-1].ravel(), draws[1:].ravel())[0, 1]
    assert abs(corr) < 0.02


def test_a_short_key_and_a_bad_keying_name_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="at least 16"):
        frame_keyed_normal(b"short", np.zeros((1, 2, 2, 1), np.uint8), (1,))
    with pytest.raises(ConfigError, match="fresh, frame"):
        NoiseKeying.parse("sometimes")
    (tmp_path / "tiny.key").write_bytes(b"abc")
    with pytest.raises(BundleError, match="delete it"):
        read_or_create_key(tmp_path / "tiny.key")


def test_the_device_key_is_made_once_with_mode_0600(tmp_path, monkeypatch):
    device = tmp_path / "device"
    key = device_noise_key(device)
    path = device / "trust" / "noise.key"
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert device_noise_key(device) == key  # kept, not remade
    monkeypatch.setenv("PRIVSPLIT_NOISE_KEY", str(tmp_path / "user.key"))
    user = device_noise_key(None)
    assert user != key and (tmp_path / "user.key").read_bytes() == user


def test_feature_spec_carries_the_keying_and_older_manifests_read_as_fresh():
    spec = FeatureSpec(shape=(4, 2, 2), scale=0.1, zero_point=0, noise_sigma=1.0, noise_keying=NoiseKeying.FRAME)
    assert FeatureSpec.from_json(spec.to_json()) == spec
    old = {k: v for k, v in spec.to_json().items() if k != "noise_keying"}
    assert FeatureSpec.from_json(old).noise_keying is NoiseKeying.FRESH
    with pytest.raises(BundleError, match="noise_keying 'someday'"):
        FeatureSpec.from_json({**old, "noise_keying": "someday"})


@pytest.fixture(scope="module")
def keyed_bundle(bundles, tmp_path_factory):
    features = load_bundle(bundles.edge, kind=BundleKind.EDGE).manifest["features"]
    root = tmp_path_factory.mktemp("keyed")
    return rewrite_bundle(
        bundles.edge,
        root / "keyed",
        version="keyed",
        features={**features, "noise_sigma": 0.5, "noise_keying": "frame"},
    )


def test_the_device_repeats_its_noise_for_a_repeated_frame_only(bundles, keyed_bundle):
    images, _ = holdout(bundles.run, 16)
    pipe = EdgePipeline.open(keyed_bundle, encoder="onnx-fp32", noise_key=KEY)
    first, again = pipe.encode(images)[1], pipe.encode(images)[1]
    np.testing.assert_array_equal(first.data, again.data)  # an exact repeat: the same wire bytes
    clean = EdgePipeline.open(keyed_bundle, encoder="onnx-fp32", noise=False).encode(images)[1]
    inside = np.abs(first.data.astype(np.int16)) < 127
    diff = (first.dequantize() - clean.dequantize())[inside]
    assert abs(diff.std() - 0.5) < 0.08  # the manifest's sigma, as with fresh noise
    other_device = EdgePipeline.open(keyed_bundle, encoder="onnx-fp32", noise_key=bytes(32)).encode(images)[1]
    assert (other_device.data != first.data).mean() > 0.5
    fresh = EdgePipeline.open(bundles.noisy, encoder="onnx-fp32")
    assert (fresh.encode(images)[1].data != fresh.encode(images)[1].data).mean() > 0.5
    assert pipe.describe()["noise_keying"] == "frame" and fresh.describe()["noise_keying"] == "fresh"


def test_a_flashed_device_keys_with_its_own_secret(bundles, keyed_bundle, tmp_path):
    device = tmp_path / "device"
    (device / "releases").mkdir(parents=True)
    release = device / "releases" / "keyed"
    import shutil

    shutil.copytree(keyed_bundle, release)
    (device / "current").symlink_to(release)
    images, _ = holdout(bundles.run, 4)
    a = EdgePipeline.open(device / "current", encoder="onnx-fp32").encode(images)[1]
    key = (device / "trust" / "noise.key").read_bytes()
    b = EdgePipeline.open(keyed_bundle, encoder="onnx-fp32", noise_key=key).encode(images)[1]
    np.testing.assert_array_equal(a.data, b.data)


def test_averaging_repeats_shrinks_fresh_noise_but_not_keyed_noise_unless_the_frames_differ():
    """The frames probe on a synthetic device: signal + sigma * noise, fresh or keyed on the frame."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (200, 4, 4, 1), dtype=np.uint8)

    def signal(x):
        return x.reshape(len(x), -1).astype(np.float32) / 255.0

    fresh_rng = np.random.default_rng(4)

    def fresh(x):
        return signal(x) + fresh_rng.standard_normal((len(x), 16), np.float32)

    def keyed(x):
        return signal(x) + frame_keyed_normal(KEY, x, (16,))

    def residual(encode, frames):
        return float((averaged_encoder(encode, frames, seed=5)(images) - signal(images)).std())

    assert residual(fresh, Frames(16)) == pytest.approx(0.25, abs=0.03)  # sigma / sqrt(16)
    assert residual(keyed, Frames(16)) == pytest.approx(residual(keyed, Frames(1)), abs=1e-6)  # nothing gained
    # a camera's next frames differ by sensor noise: keyed noise no longer repeats, and averaging works again
    assert residual(keyed, Frames(16, jitter=2.0)) < 0.35


def test_frame_jitter_values_are_checked():
    assert Frames(4, jitter=2).tag == ".frames4.jitter2"
    with pytest.raises(ConfigError, match="--frames K"):
        Frames(1, jitter=2)
    with pytest.raises(ConfigError, match="grey levels"):
        Frames(4, jitter=-1)


def test_stand_in_keys_are_seeded_and_distinct():
    assert stand_in_key(1) == stand_in_key(1) != stand_in_key(2) and len(stand_in_key(1)) == 32
