"""The purifier: its invariants, persistence, calibration and training on a real trained target."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privsplit.errors import ConfigError, RunError
from privsplit.models.purifier import (
    Purifier,
    PurifierConfig,
    load_purifier,
    purify_numpy,
    save_purifier,
    swap_to_label,
)
from privsplit.run import RunFolder
from privsplit.train.purifier import (
    PurifierMode,
    PurifierTrainConfig,
    calibrate_log_clamp,
    estimated_excess_auc,
    exposed_rows,
    fit_purifier,
    l1_distortion_pct,
    train_purifier,
)


def _dirichlet(n: int, k: int, seed: int, concentration: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(k, concentration), size=n).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 12), clamp=st.floats(0.1, 8.0))
def test_untrained_purifier_invariants(seed, k, clamp):
    p = _dirichlet(64, k, seed)
    q = purify_numpy(Purifier(PurifierConfig(k, log_clamp=clamp)), p)
    assert q.shape == p.shape and np.all(q >= 0)
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(q.argmax(1), p.argmax(1))  # the label is kept exactly
    collapsed = ~exposed_rows(p, clamp)
    # collapsed rows all return the same vector: one-hot on the label
    np.testing.assert_allclose(q[collapsed].max(1), 1.0, atol=1e-6)
    # exposed rows keep their shape (entries above min_prob, renormalised)
    kept = np.where(p >= 1e-3, p, 0)
    kept /= kept.sum(1, keepdims=True)
    np.testing.assert_allclose(q[~collapsed], kept[~collapsed], atol=2e-3)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 10))
def test_swap_to_label_moves_the_top_to_the_label(seed, k):
    q = torch.as_tensor(_dirichlet(16, k, seed))
    label = torch.as_tensor(np.random.default_rng(seed).integers(0, k, 16))
    out = swap_to_label(q, label)
    assert torch.equal(out.argmax(1), label)
    assert torch.allclose(out.sort(1).values, q.sort(1).values)  # a permutation of the same values


def test_config_round_trip_and_errors(tmp_path):
    config = PurifierConfig(10, log_clamp=1.5)
    assert (config.hidden, config.bottleneck) == (7, 4)  # the paper's 10 -> 7 -> 4 shape
    assert PurifierConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError):
        PurifierConfig(1)
    with pytest.raises(ConfigError):
        PurifierConfig(10, log_clamp=0)
    with pytest.raises(ConfigError):
        PurifierConfig.from_json({**config.to_json(), "bogus": 1})


def test_save_and_load_reproduce_outputs(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert load_purifier(run) is None
    p = _dirichlet(200, 10, 1)
    purifier, facts = fit_purifier(p, PurifierTrainConfig(epochs=5), ref_labels=p.argmax(1))
    save_purifier(run, purifier, training=facts)
    loaded = load_purifier(run)
    assert loaded is not None and not loaded.training
    np.testing.assert_array_equal(purify_numpy(loaded, p), purify_numpy(purifier, p))
    run.file("purifier.safetensors").unlink()
    with pytest.raises(RunError, match="train-purifier"):
        load_purifier(run)


def test_calibration_meets_its_targets():
    p = _dirichlet(400, 10, 2, concentration=0.15)
    labels = np.where(np.random.default_rng(0).random(400) < 0.85, p.argmax(1), (p.argmax(1) + 1) % 10)
    clamp = calibrate_log_clamp(p, labels, max_distortion_pct=5.0)
    q = purify_numpy(Purifier(PurifierConfig(10, log_clamp=clamp)), p)
    assert l1_distortion_pct(p, q) <= 5.0
    tight = calibrate_log_clamp(p, labels, max_excess_auc=0.04)
    loose = calibrate_log_clamp(p, labels, max_excess_auc=0.1)
    assert tight < loose  # less leakage allowed -> more collapse -> smaller clamp
    assert estimated_excess_auc(p, labels, tight) <= 0.04
    assert estimated_excess_auc(p, labels, loose) <= 0.1


def test_training_options_are_validated():
    with pytest.raises(ConfigError):
        PurifierTrainConfig(epochs=0)
    with pytest.raises(ConfigError):
        PurifierTrainConfig(max_distortion_pct=0)
    with pytest.raises(ValueError):
        PurifierTrainConfig(mode="bogus")
    with pytest.raises(ConfigError, match="adversarial"):
        fit_purifier(
            _dirichlet(50, 10, 0),
            PurifierTrainConfig(mode=PurifierMode.ADVERSARIAL, epochs=1),
            ref_labels=np.zeros(50, int),
        )


def _copy_run(src, tmp_path) -> RunFolder:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return RunFolder(dst)


def test_purifier_keeps_the_label_on_a_trained_target(digits_run, tmp_path):
    from privsplit.data import Part

    run = _copy_run(digits_run, tmp_path)
    train_purifier(run, PurifierTrainConfig(epochs=30), progress=False)
    purifier = load_purifier(run)
    facts = run.read_json("purifier.json")["training"]
    assert facts["mode"] == "ae" and facts["reference_label_agreement"] == 1.0
    data, split, model = run.dataset(), run.split(), run.load_split_model()
    holdout = split[Part.HOLDOUT]
    p = model.scores(data.images[holdout], noise_seed=5)
    q = purify_numpy(purifier, p)
    assert np.array_equal(q.argmax(1), p.argmax(1))
    assert (q.argmax(1) == data.task_labels[holdout]).mean() == (p.argmax(1) == data.task_labels[holdout]).mean()
    # the purifier really purifies: fewer distinct vectors than the classifier returns
    assert len(np.unique(q.round(6), axis=0)) < 0.9 * len(np.unique(p.round(6), axis=0))


@pytest.mark.slow
def test_adversarial_mode_trains_on_reference_and_keeps_labels(digits_run, tmp_path):
    run = _copy_run(digits_run, tmp_path)
    train_purifier(run, PurifierTrainConfig(mode=PurifierMode.ADVERSARIAL, epochs=3), progress=False)
    facts = run.read_json("purifier.json")["training"]
    assert facts["mode"] == "adversarial"
    assert facts["reference_label_agreement"] == 1.0
    assert facts["shadow_records"] == len(run.split()["reference"])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--mode", "swap", "--swap-share", "0.9"], "(0, 0.5]"),
        (["--mode", "swap", "--swap-share", "lots"], "'lots'"),
        (["--swap-share", "0.1"], "--mode swap only"),
        (["--mode", "shuffle"], "invalid choice"),
    ],
)
def test_bad_purifier_options_give_one_line_errors(digits_run, capsys, argv, needle):
    from privsplit.cli.main import main

    try:
        code = main(["train-purifier", str(digits_run), *argv, "--quiet"])
    except SystemExit as exc:  # argparse: its usage line, then the one-line error
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and needle in err[-1] and "Traceback" not in "\n".join(err), err


def test_swap_options_and_calibration_bounds():
    from privsplit.train.purifier_swap import calibrate_swap, margins

    with pytest.raises(ConfigError, match="swap_share"):
        PurifierTrainConfig(mode=PurifierMode.SWAP, swap_share=0.7)
    with pytest.raises(ConfigError, match="members"):
        fit_purifier(
            _dirichlet(50, 10, 0), PurifierTrainConfig(mode=PurifierMode.SWAP, epochs=1), ref_labels=np.zeros(50, int)
        )
    # members all right and very confident; reference right 70% of the time and spread out
    ref = _dirichlet(2000, 10, 3, concentration=0.5)
    ref_labels = np.where(np.random.default_rng(1).random(2000) < 0.7, ref.argmax(1), (ref.argmax(1) + 1) % 10)
    mem = _dirichlet(2000, 10, 4, concentration=0.02)
    cal = calibrate_swap(ref, ref_labels, mem, mem.argmax(1), share=0.05)
    assert cal.members_eligible == pytest.approx(0.95, abs=0.01)
    assert cal.reference_eligible * cal.swap_gate <= 0.05 + 1e-9  # the bound on non-members, in expectation
    q = purify_numpy(Purifier(PurifierConfig(10, swap_margin=cal.swap_margin, swap_gate=cal.swap_gate)), ref)
    changed = (q.argmax(1) != ref.argmax(1)).mean()
    assert changed <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)  # and as measured: the gate is spread evenly
    assert (margins(ref)[q.argmax(1) != ref.argmax(1)] >= cal.swap_margin).all()  # only member-like rows move


def test_the_cli_lists_every_purifier_mode_without_importing_torch():
    from privsplit.cli.purifier import MODES
    from privsplit.train.purifier_modes import PurifierMode

    assert MODES == tuple(m.value for m in PurifierMode)
