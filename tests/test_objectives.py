"""The privacy objectives of `privsplit train` (issue 14): each shows its effect on a case where it is large.

The case: digits at 16 px with a private attribute that the task fixes, ``high`` = digit >= 5. The task floor is then
1.0 (the task label says everything about ``high``): an objective that aims at the floor has nothing to remove, while
one that aims at chance must erase the task itself.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import tiny_digits_model  # noqa: E402

from privsplit.data import Part, SplitFractions, load_dataset, make_split  # noqa: E402
from privsplit.data.dataset import LabeledImages  # noqa: E402
from privsplit.data.spec import register_loader  # noqa: E402
from privsplit.errors import ConfigError  # noqa: E402
from privsplit.train import AdversaryTarget, PrivacyPreset, TrainConfig, TrainingCollapsed, train_run  # noqa: E402
from privsplit.train.adversarial import accuracy, next_adversary_weight  # noqa: E402
from privsplit.train.collapse import check_collapse  # noqa: E402
from privsplit.train.loop import train_split_model  # noqa: E402


@register_loader("digits-high", default_image_size=16, needs_path=False, help="test: digits + high = digit >= 5")
def _load_digits_high(path, *, image_size: int, limit: int | None) -> LabeledImages:
    from privsplit.data.digits import load_digits

    base = load_digits(None, image_size=image_size, limit=limit)
    labels = dict(base.labels)
    labels["high"] = (labels["digit"] >= 5).astype(np.int64)
    classes = dict(base.classes) | {"high": ("low", "high")}
    return LabeledImages(base.images, labels, classes, "digits-high", default_task="digit")


def _model(data):
    return tiny_digits_model(feature_channels=4, noise_sigma=0.5, num_private_classes=2)


@pytest.fixture(scope="module")
def high():
    data = load_dataset("digits-high", private="high", image_size=16, limit=800)
    return data, make_split(len(data), SplitFractions(), seed=0)


def _train(high, **changes):
    data, split = high
    base = dict(
        epochs=4,
        adv_weight=10.0,
        head_finetune_epochs=0,
        warmup_epochs=0,
        batch_size=64,
        adversaries=("mlp",),
        adv_steps=1,
        adv_warmup_steps=10,
        distill_weight=0.0,
        leakage_budget=None,
        utility_budget=None,
    )
    config = TrainConfig(**{**base, **changes})
    result = train_split_model(_model(data), data, split, config, seed=0, progress=False)
    hold = split[Part.HOLDOUT]
    x, y = result.model.preprocess(data.images[hold]), torch.as_tensor(data.task_labels[hold])
    return result, accuracy(result.model, x, y)


def test_conditional_target_keeps_the_task_that_a_uniform_target_erases(high):
    _, uniform = _train(high, adversary_target=AdversaryTarget.UNIFORM)
    _, conditional = _train(high, adversary_target=AdversaryTarget.CONDITIONAL)
    _, plain = _train(high, adv_weight=0.0)
    # the attribute is a function of the task: aiming at chance must erase digit evidence, aiming at the floor not
    # measured here: 0.819 conditional, 0.719 uniform, 0.838 without adversaries
    assert conditional > uniform + 0.05, (conditional, uniform)
    assert conditional > plain - 0.05, (conditional, plain)


def test_leakage_budget_controller_raises_and_lowers_the_weight(high):
    # the adversaries read "high" perfectly from any useful feature; against chance (uniform) that is over any budget
    over, _ = _train(high, adversary_target=AdversaryTarget.UNIFORM, adv_weight=1.0, leakage_budget=0.0)
    weights = [h.adversary_weight for h in over.history]
    assert weights == [1.0, 2.0, 4.0, 4.0], weights  # doubled while over, capped at 4x the configured weight
    assert all(h.reference_leakage > h.leakage_floor for h in over.history)
    # aimed at the floor (1.0 here) nothing is over the budget: the configured weight holds, no more and no less
    under, _ = _train(high, adversary_target=AdversaryTarget.CONDITIONAL, adv_weight=1.0, leakage_budget=0.02)
    assert [h.adversary_weight for h in under.history] == [1.0, 1.0, 1.0, 1.0]
    assert under.history[0].leakage_floor == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    ("weight", "leakage", "task_dropped", "expected"),
    [
        (1.0, 0.70, False, 2.0),  # over the budget: double ...
        (4.0, 0.70, False, 4.0),  # ... up to 4x the configured weight
        (4.0, 0.60, False, 2.0),  # under it: back towards the configured weight ...
        (1.0, 0.60, False, 1.0),  # ... which always holds while the task does
        (0.25, 0.60, False, 0.5),  # (from below too, after the task had lowered it)
        (1.0, 0.70, True, 0.5),  # the task fell under the utility budget: halve, whatever the leakage ...
        (0.0625, 0.70, True, 0.0625),  # ... down to 1/16 of the configured weight
    ],
)
def test_controller_rule(weight, leakage, task_dropped, expected):
    nxt = next_adversary_weight(weight, base=1.0, leakage=leakage, limit=0.62, task_dropped=task_dropped)
    assert nxt == expected


def test_utility_budget_eases_the_pressure_when_the_task_drops(high):
    # uniform target, leakage budget 0: always over on leakage, so only the task decides: the weight halves after an
    # epoch whose reference accuracy is under the warm start's, and doubles (up to 4x) after one that is not
    result, _ = _train(
        high,
        epochs=6,
        warmup_epochs=2,
        adversary_target=AdversaryTarget.UNIFORM,
        adv_weight=30.0,
        leakage_budget=0.0,
        utility_budget=0.0,
    )
    assert all(h.adversary_loss is None and h.adversary_weight is None for h in result.history[:2])  # warm start
    warm = result.history[1].reference_accuracy
    joint = result.history[2:]
    assert [h.adversary_weight for h in joint][0] == 30.0
    halved = 0
    for now, nxt in zip(joint, joint[1:]):
        dropped = now.reference_accuracy < warm
        expected = now.adversary_weight / 2 if dropped else min(120.0, now.adversary_weight * 2)
        assert nxt.adversary_weight == expected, (now, nxt, warm)
        halved += dropped
    assert halved >= 1  # a weight of 30 against chance costs the task, and the controller answers it


def test_warm_start_and_distillation_keep_the_task(high):
    _, cold = _train(high, adversary_target=AdversaryTarget.UNIFORM, adv_weight=1.0)
    _, warm = _train(
        high, adversary_target=AdversaryTarget.UNIFORM, adv_weight=1.0, warmup_epochs=2, distill_weight=2.0
    )
    assert warm > cold + 0.05, (warm, cold)


def test_presets_and_bad_values():
    strong, balanced = TrainConfig.preset(PrivacyPreset.STRONG), TrainConfig.preset("balanced")
    assert strong.adversary_target is AdversaryTarget.UNIFORM and strong.warmup == 0 and strong.leakage_budget is None
    assert balanced == TrainConfig()
    assert not TrainConfig.preset("off").protected
    assert TrainConfig(epochs=2, warmup_epochs=None).warmup == 0
    with pytest.raises(ValueError):
        PrivacyPreset("paranoid")
    for bad in (dict(leakage_budget=-1.0), dict(leakage_budget=0.5), dict(utility_budget=1.5), dict(warmup_epochs=20)):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="adversary-target"):
        TrainConfig(adversary_target="sideways")


def test_collapse_check():
    hist = [{"epoch": e, "reference_accuracy": a} for e, a in enumerate([0.70, 0.86, 0.60, 0.56], 1)]
    near = check_collapse(hist, 0.556, 0.505)
    assert near.collapsed and "majority" in near.reason
    far = check_collapse(hist, 0.72, 0.505)
    assert far.collapsed and "epoch 2" in far.reason
    assert not check_collapse(hist, 0.85, 0.505).collapsed


def test_a_collapsed_run_says_so_and_export_refuses_it(tmp_path):
    from privsplit.export.pipeline import export_run
    from privsplit.run import RunFolder

    # a protected run whose task stays at the majority rate (a learning rate too small to learn it stands in for
    # adversaries that won: the check judges the outcome, whatever the cause)
    config = TrainConfig(epochs=2, lr=1e-7, warmup_epochs=0, head_finetune_epochs=0)
    out = tmp_path / "run"
    with pytest.raises(TrainingCollapsed, match="collapsed") as err:
        train_run("digits-high", out, task="high", private="digit", image_size=16, config=config, progress=False)
    assert "\n" not in str(err.value) and "--force" in str(err.value)
    run = RunFolder(out)
    assert run.collapse_reason() is not None  # the run is written, for inspection
    with pytest.raises(ConfigError, match="refuses"):
        export_run(run, tmp_path / "export", progress=False)
    assert not (tmp_path / "export").exists()


def test_cli_names_match_the_enums():
    from privsplit.cli.train import PRESETS, TARGETS

    assert set(PRESETS) == {p.value for p in PrivacyPreset}
    assert set(TARGETS) == {t.value for t in AdversaryTarget}


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--leakage-budget", "-1"], "--leakage-budget"),
        (["--leakage-budget", "0.7"], "leakage-budget"),
        (["--privacy", "paranoid"], "--privacy"),
        (["--adversary-target", "sideways"], "--adversary-target"),
        (["--warmup-epochs", "9", "--epochs", "4"], "warmup-epochs"),
        (["--unprotected", "--privacy", "strong"], "--unprotected"),
    ],
)
def test_bad_objective_options_are_one_line_errors(tmp_path, flags, needle):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "privsplit.cli.main", "train", "--data", "digits", "--out", str(tmp_path / "r"), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[-1], proc.stderr
    assert not (tmp_path / "r").exists()


def test_resume_continues_the_controller_and_the_teacher(tmp_path, monkeypatch):
    """Stopped after the adversarial epochs began (teacher made, weight moved), resumed: the same run to the bit."""
    from privsplit.train.checkpoint import STOP_ENV, TrainingStopped

    config = TrainConfig(epochs=4, warmup_epochs=1, head_finetune_epochs=1, adversaries=("linear",), adv_steps=1)
    common = dict(private="slant", image_size=16, limit=400, seed=2, config=config, progress=False)
    full = train_run("digits", tmp_path / "full", **common)
    out = tmp_path / "run"
    monkeypatch.setenv(STOP_ENV, "2")
    with pytest.raises(TrainingStopped):
        train_run("digits", out, **common)
    monkeypatch.delenv(STOP_ENV)
    resumed = train_run("digits", out, resume=True, **common)
    ma, mb = full.read_json("metrics.json"), resumed.read_json("metrics.json")
    assert ma["history"][1]["adversary_weight"] == 1.0 and ma["history"][0]["adversary_weight"] is None
    assert ma["history"] == mb["history"] and ma["task"] == mb["task"]
