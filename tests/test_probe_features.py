"""The feature-leakage probe: real attackers on real data (CelebA 600 at 32 px, digits).

An encoder that passes the image through must leak; one that returns noise must not; the task floor
must match its analytic value; results must survive JSON; the CLI must work on a run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import train_tiny_digits_model

from privsplit.data import Dataset, SplitFractions, load_dataset, make_split
from privsplit.errors import ConfigError, DataError
from privsplit.probes.feature_probe import (
    AttributeAttacker,
    FeatureLeakageResult,
    FeatureProbeSpec,
    probe_features,
    torch_encoder_fn,
)

ROOT = Path(__file__).resolve().parent.parent
CELEBA = ROOT.parent / "shared" / "data" / "celeba-10k"
needs_celeba = pytest.mark.skipif(
    not (CELEBA / "list_attr_celeba.txt").is_file(),
    reason=f"CelebA 10k not found at ../shared/data/celeba-10k ({CELEBA})",
)
# Few epochs and one training set (the attacker part; the learning curve is tested in test_probe_curve.py)
# keep the file fast; the attackers still select their epoch on attacker data.
FAST = FeatureProbeSpec(epochs=12, patience=5, reconstruction_epochs=6, curve=(1.0,), pooled=False, seed=0)


@pytest.fixture(scope="module")
def celeba():
    data = load_dataset(f"celeba:{CELEBA}", task="Smiling", private="Male", image_size=32, limit=600)
    # most of the 600 go to the two parts the probe uses: 270 attacker, 270 holdout
    split = make_split(len(data), SplitFractions(members=0.1, reference=0.0, holdout=0.45, attacker=0.45), seed=0)
    return data, split


def downsample_encoder(images: np.ndarray) -> np.ndarray:
    """Identity-like: the image average-pooled 4x, as uint8 (N, 3, 8, 8) (a quantised artefact's dtype)."""
    n, h, w, c = images.shape
    pooled = images.astype(np.float32).reshape(n, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4))
    return np.rint(pooled).astype(np.uint8).transpose(0, 3, 1, 2)


def noise_encoder(images: np.ndarray) -> np.ndarray:
    """Features independent of the image."""
    rng = np.random.default_rng(int(images.sum()) % (2**32))
    return rng.normal(size=(len(images), 4, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def leaky_result(celeba) -> FeatureLeakageResult:
    data, split = celeba
    return probe_features(downsample_encoder, data, split, spec=FAST, progress=False)


@needs_celeba
@pytest.mark.slow
@pytest.mark.celeba
def test_identity_like_encoder_leaks_attribute_and_image(leaky_result):
    r = leaky_result
    assert (r.attacker_size, r.holdout_size) == (270, 270)
    assert r.feature_shape == (3, 8, 8) and r.feature_dtype == "uint8"
    att = r.attribute
    assert att is not None and set(att.attackers) == {f"{a}@attacker" for a in ("logistic", "mlp", "cnn", "gbm")}
    assert att.chance == 0.5
    # Male from 8x8 colour pixels: far above chance and above what the task label alone gives
    assert att.balanced_accuracy >= 0.68, r.summary()
    assert att.balanced_accuracy > att.task_floor + 0.05, r.summary()
    assert att.auc is not None and att.auc >= 0.75
    assert att.balanced_accuracy == max(s.balanced_accuracy for s in att.attackers.values())
    rec = r.reconstruction
    assert rec is not None
    assert rec.ssim >= rec.baseline_ssim + 0.2, r.summary()
    assert rec.psnr > rec.baseline_psnr + 5 and rec.mse < rec.baseline_mse / 3
    assert rec.samples.originals.shape == rec.samples.reconstructions.shape == (16, 32, 32, 3)
    assert rec.samples.reconstructions.dtype == np.uint8


@needs_celeba
@pytest.mark.slow
@pytest.mark.celeba
def test_noise_encoder_leaks_nothing(celeba):
    data, split = celeba
    r = probe_features(noise_encoder, data, split, spec=FAST, progress=False)
    att, rec = r.attribute, r.reconstruction
    assert att.balanced_accuracy <= att.chance + 0.08, r.summary()
    assert abs(att.auc - 0.5) <= 0.1, r.summary()
    # the decoder can do no better than the mean image, and (starting from it) no worse
    assert abs(rec.ssim - rec.baseline_ssim) <= 0.02, r.summary()
    assert rec.mse <= rec.baseline_mse * 1.03


def _analytic_floor(p_private_given_task: np.ndarray, p_task: np.ndarray) -> float:
    """Balanced accuracy of the class-balanced Bayes rule from the task label to a binary private label."""
    joint = np.stack([p_task * (1 - p_private_given_task), p_task * p_private_given_task], axis=1)  # [task, private]
    prior = joint.sum(0)
    predict = (joint / prior).argmax(1)  # per task class: the private class of highest balanced likelihood
    recall = [joint[predict == k, k].sum() / prior[k] for k in (0, 1)]
    return float(np.mean(recall))


def test_task_floor_matches_analytic_value():
    # private = a noisy function of the task label, with a rare positive class, so an unbalanced
    # classifier (always "0") would score 0.5 while the balanced floor is 0.751
    rng = np.random.default_rng(0)
    p_task, p_pos = np.array([0.5, 0.5]), np.array([0.4, 0.05])
    n = 12000
    task = rng.choice(2, size=n, p=p_task)
    private = (rng.random(n) < p_pos[task]).astype(np.int64)
    data = Dataset(
        images=rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8),
        labels={"t": task.astype(np.int64), "p": private},
        classes={"t": ("a", "b"), "p": ("neg", "pos")},
        source="synthetic",
        task="t",
        private="p",
    )
    split = make_split(n, SplitFractions(members=0.01, reference=0.0, holdout=0.495, attacker=0.495), seed=1)
    spec = FeatureProbeSpec(attackers=(AttributeAttacker.LOGISTIC,), reconstruction=False, logistic_cs=(0.01,))
    flat = lambda x: x.reshape(len(x), -1)[:, :4].astype(np.float32)  # noqa: E731 - pixels carry no label information
    r = probe_features(flat, data, split, spec=spec, progress=False)
    expected = _analytic_floor(p_pos, p_task)
    assert expected == pytest.approx(0.751, abs=0.001)
    assert r.attribute.task_floor == pytest.approx(expected, abs=0.015)
    assert r.attribute.task_floor_auc == pytest.approx(expected, abs=0.015)  # a binary score: AUC = balanced accuracy
    assert r.reconstruction is None and r.feature_shape == (4, 1, 1)


@needs_celeba
@pytest.mark.slow
@pytest.mark.celeba
def test_json_round_trip(leaky_result, tmp_path):
    r = leaky_result.with_task_accuracy(0.8125)
    data = json.loads(json.dumps(r.to_json()))
    assert data["schema_version"] == 2
    for dotted in (
        "task.accuracy",
        "attribute.balanced_accuracy",
        "attribute.auc",
        "attribute.chance",
        "attribute.task_floor",
        "attribute.attackers.logistic@attacker.balanced_accuracy",
        "attribute.attackers.cnn@attacker.auc",
        "attribute.attackers.gbm@attacker.ci_low",
        "reconstruction.ssim",
        "reconstruction.psnr",
        "reconstruction.mse",
        "reconstruction.baseline_ssim",
        "reconstruction.baseline_psnr",
        "reconstruction.baseline_mse",
        "sizes.attacker",
        "sizes.holdout",
    ):
        node = data
        for key in dotted.split("."):
            node = node[key]
        assert isinstance(node, (int, float)), dotted
    assert data["task"]["accuracy"] == 0.8125
    back = FeatureLeakageResult.from_json(data)
    assert back == r and back.to_json() == r.to_json()

    path = r.save(tmp_path / "out")
    assert path == tmp_path / "out" / "probe_features.json"
    loaded = FeatureLeakageResult.load(path)
    assert loaded == r and loaded.reconstruction.samples == r.reconstruction.samples
    text = r.summary()
    for needle in ("task floor", "chance", "mean-image baseline", "logistic", "0.812"):
        assert needle in text

    from privsplit.report.feature_plots import write_feature_plots

    pngs = write_feature_plots(loaded, tmp_path / "plots")  # drawn from the saved result alone
    assert sorted(p.name for p in pngs) == ["feature_attribute_leakage.png", "feature_reconstruction_grid.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)


def test_bad_encoders_and_splits_are_refused():
    rng = np.random.default_rng(0)
    data = Dataset(
        images=rng.integers(0, 256, size=(200, 8, 8, 1), dtype=np.uint8),
        labels={"t": rng.integers(0, 2, 200)},
        classes={"t": ("a", "b")},
        source="synthetic",
        task="t",
    )
    split = make_split(200, seed=0)
    spec = FeatureProbeSpec(reconstruction=False)
    with pytest.raises(DataError, match="rows"):
        probe_features(lambda x: np.zeros((len(x) - 1, 4)), data, split, spec=spec, progress=False)
    with pytest.raises(DataError, match="NaN"):
        probe_features(lambda x: np.full((len(x), 4), np.nan), data, split, spec=spec, progress=False)
    with pytest.raises(DataError, match=r"\(N, C, h, w\)"):
        probe_features(lambda x: np.zeros((len(x), 4, 2)), data, split, spec=spec, progress=False)
    no_attacker = make_split(200, SplitFractions(members=0.5, reference=0.3, holdout=0.2, attacker=0.0), seed=0)
    with pytest.raises(ConfigError, match="attacker part holds 0 images"):
        probe_features(lambda x: x, data, no_attacker, spec=spec, progress=False)


def _tiny_digits_run(path: Path):
    """A real (briefly trained) digits run folder with channel noise, written with the run-folder API."""
    from privsplit.run import DataConfig, RunConfig, RunFolder

    data = load_dataset("digits", image_size=16, limit=500)
    split = make_split(len(data), seed=0)
    model = train_tiny_digits_model(data, split, feature_channels=4, noise_sigma=0.5, epochs=6)
    config = model.config
    run = RunFolder(path)
    run.write_config(RunConfig(data=DataConfig("digits", "digit", None, 16, 500), model=config, seed=0))
    split.save(run.file("split.json"))
    run.save_split_model(model)
    return run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return _tiny_digits_run(tmp_path_factory.mktemp("digits") / "run")


@pytest.mark.slow
def test_cli_probe_features_on_a_run_folder(digits_run, tmp_path, capsys):
    from privsplit.cli.main import main

    run = digits_run
    out, plots = tmp_path / "probe.json", tmp_path / "plots"
    rc = main(["probe", "features", str(run.path), "--json", str(out), "--plots", str(plots), "--epochs", "3"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "mean-image baseline" in printed and "no private attribute" in printed
    data = json.loads(out.read_text())
    in_run = json.loads(run.file("probe_features.json").read_text())
    assert in_run["reconstruction"].pop("samples") == "probe_features.samples.npz"
    assert data["reconstruction"].pop("samples") == "probe.samples.npz"
    assert data == in_run
    assert data["attribute"] is None
    assert data["sizes"] == {"attacker": 100, "holdout": 100}
    assert data["task"]["accuracy"] > 0.5  # 10 classes: a trained model, scored with noise on
    assert data["spec"]["epochs"] == 3 and data["spec"]["reconstruction_epochs"] == 3
    rec = data["reconstruction"]
    assert 0 <= rec["ssim"] <= 1 and rec["mse"] > 0
    assert (tmp_path / "probe.samples.npz").is_file()
    assert (plots / "feature_reconstruction_grid.png").stat().st_size > 1000
    assert not (plots / "feature_attribute_leakage.png").exists()


def test_cli_reports_a_missing_run(tmp_path, capsys):
    from privsplit.cli.main import main

    assert main(["probe", "features", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_torch_encoder_fn_adds_fresh_seeded_noise(digits_run):
    run = digits_run
    model = run.load_split_model()
    images = run.dataset().images[:8]
    a, b = torch_encoder_fn(model, seed=3), torch_encoder_fn(model, seed=3)
    first = a(images)
    assert first.shape == (8, 4, 8, 8) and first.dtype == np.float32
    np.testing.assert_array_equal(first, b(images))  # same seed, same noise
    assert not np.allclose(first, a(images))  # the next transmission draws fresh noise
    clean = torch_encoder_fn(model, noise=False)(images)
    assert 0.3 < float(np.std(first - clean)) < 0.7  # noise sigma 0.5


def test_cli_no_reconstruction_skips_the_decoder(digits_run, tmp_path, capsys):
    from privsplit.cli.main import main

    out = tmp_path / "probe.json"
    rc = main(["probe", "features", str(digits_run.path), "--json", str(out), "--epochs", "2", "--no-reconstruction"])
    assert rc == 0 and "mean-image baseline" not in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["reconstruction"] is None and data["spec"]["reconstruction"] is False
    assert data["task"]["accuracy"] > 0.5
