"""The stronger feature probe (learning curve, a gradient-boosting attacker, intervals) and the frontier
benchmark's table and plot functions (on fixed numbers: the sweep itself is a benchmark, not a test)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from tiny_models import train_tiny_digits_model

from privsplit.data import load_dataset, make_split
from privsplit.probes.feature_probe import AttributeAttacker, FeatureProbeSpec, probe_features, torch_encoder_fn
from privsplit.probes.feature_results import FeatureLeakageResult
from privsplit.probes.feature_spec import POOLED

ROOT = Path(__file__).resolve().parent.parent
V1 = ROOT / "tests" / "data" / "results_v1"


@pytest.fixture(scope="module")
def curve_result() -> FeatureLeakageResult:
    data = load_dataset("digits", task="digit", private="slant", image_size=16, limit=600)
    split = make_split(len(data), seed=0)  # 240 members, 120 reference, 120 holdout, 120 attacker
    model = train_tiny_digits_model(data, split, feature_channels=8, noise_sigma=0.0, epochs=4)  # unprotected
    spec = FeatureProbeSpec(
        attackers=(AttributeAttacker.LOGISTIC, AttributeAttacker.GBM),  # the networks: test_probe_features.py
        logistic_cs=(0.1,),
        gbm_max_iter=40,
        reconstruction=False,
        null=True,  # the same attackers on noise features: the headline's chance level
        seed=0,
    )
    return probe_features(torch_encoder_fn(model, noise=False), data, split, spec=spec, progress=False)


@pytest.mark.slow
def test_learning_curve_and_gbm_beat_chance_on_unprotected_digits(curve_result):
    r = curve_result
    att = r.attribute
    sets = ("attacker-25%", "attacker-50%", "attacker", POOLED)
    assert r.spec.training_sets == sets
    assert set(att.attackers) == {f"{a}@{s}" for a in ("logistic", "gbm") for s in sets}
    curve = att.curve()
    assert list(curve) == ["logistic", "gbm"]
    sizes = {t: s.train_size for t, s in curve["gbm"].items()}
    assert sizes == {"attacker-25%": 30, "attacker-50%": 60, "attacker": 120, POOLED: 480}
    for key, score in att.attackers.items():
        assert math.isfinite(score.balanced_accuracy) and 0.0 <= score.balanced_accuracy <= 1.0, key
        assert score.ci_low <= score.balanced_accuracy <= score.ci_high, key
        assert score.ci_high - score.ci_low < 0.3, key  # 120 holdout images: a binomial interval of about +-0.09
    # the headline is the best over every family and training set
    assert att.balanced_accuracy == max(s.balanced_accuracy for s in att.attackers.values())
    assert att.best_score is att.attackers[att.best]
    # slant survives an unprotected encoder: every family, at its best, beats chance, and so does the
    # gradient-boosting family (not the adversaries' architecture) trained on the pooled set
    assert att.chance == 0.5
    for family, scores in curve.items():
        assert max(s.balanced_accuracy for s in scores.values()) > att.chance + 0.1, (family, r.summary())
    assert curve["gbm"][POOLED].balanced_accuracy > att.chance + 0.1, r.summary()
    assert att.best_score.ci_low > att.chance, r.summary()
    # slant is split at each digit's median, so the digit alone says little about it
    assert abs(att.task_floor - 0.5) < 0.12 and att.task_floor_ci[0] <= att.task_floor <= att.task_floor_ci[1]
    text = r.summary()
    for needle in ("attacker-25%", POOLED, "gbm", "task floor", "95%"):
        assert needle in text


@pytest.mark.slow
@pytest.mark.slow
def test_null_reading_is_the_best_of_the_same_attackers_on_noise(curve_result):
    att = curve_result.attribute
    # 8 attackers (2 families x 4 training sets) on features that carry nothing, scored on 120 holdout images:
    # each about chance +- 0.045, their best above chance by the winner's curse, and far under the real
    # encoder's leak (slant survives the unprotected encoder)
    assert att.null_balanced_accuracy is not None and att.null_best in att.attackers
    assert att.chance - 0.02 <= att.null_balanced_accuracy <= att.chance + 0.15, curve_result.summary()
    assert att.balanced_accuracy >= att.null_balanced_accuracy + 0.1, curve_result.summary()
    text = curve_result.summary()
    assert f"{att.null_balanced_accuracy:.3f} ({att.null_best})" in text and "reads by chance" in text
    data = curve_result.to_json()["attribute"]
    assert data["null_balanced_accuracy"] == att.null_balanced_accuracy and data["null_best"] == att.null_best
    # the permutation null of the same attackers' real predictions (no training): about chance on average, its
    # 95th percentile above the mean, far under the real leak, and written to the JSON
    assert att.chance < att.permutation_null_mean < att.chance + 0.1  # best of 8 on 120 records: the winner's curse
    assert att.permutation_null_mean < att.permutation_null_q95 < att.balanced_accuracy
    assert data["permutation_null_q95"] == att.permutation_null_q95
    assert f"95th percentile {att.permutation_null_q95:.3f}" in text


def test_curve_result_round_trips_and_draws_its_learning_curve(curve_result, tmp_path):
    data = json.loads(json.dumps(curve_result.to_json()))
    assert data["schema_version"] == 2 and data["data"]["features_from"] == "torch"
    assert data["attribute"]["best_ci"][0] <= data["attribute"]["balanced_accuracy"] <= data["attribute"]["best_ci"][1]
    back = FeatureLeakageResult.from_json(data)
    assert back == curve_result
    from privsplit.report.feature_plots import write_feature_plots

    pngs = write_feature_plots(back, tmp_path)
    assert sorted(p.name for p in pngs) == ["feature_attribute_leakage.png", "feature_learning_curve.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)


def test_schema_1_results_still_load_as_one_point_curves():
    r = FeatureLeakageResult.load(V1 / "probe_features.json")
    att = r.attribute
    scores = att.attackers
    assert att.curve() == {"logistic": {"attacker": scores["logistic"]}, "mlp": {"attacker": scores["mlp"]}}
    assert att.best == "mlp" and att.balanced_accuracy == 0.64 and att.task_floor_ci is None
    assert att.null_balanced_accuracy is None and "null" not in r.summary()  # written before the null reading
    assert r.features_from == "torch"
    assert "best attacker: mlp 0.640" in r.summary()
    assert r.to_json()["schema_version"] == 2


def test_bad_curve_options_are_refused(tmp_path, capsys):
    from privsplit.cli.main import main
    from privsplit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"curve fractions must be in \(0, 1\]"):
        FeatureProbeSpec(curve=(0.5, 1.5))
    with pytest.raises(ConfigError, match="needs a training set"):
        FeatureProbeSpec(curve=(), pooled=False)
    with pytest.raises(SystemExit):
        main(["probe", "features", str(tmp_path), "--curve", "0,1"])
    err = capsys.readouterr().err
    assert "fractions must be in (0, 1]" in err


# ---- the frontier benchmark's numbers, table and plot -----------------------------------------------------
def _frontier():
    spec = importlib.util.spec_from_file_location("privacy_frontier", ROOT / "benchmarks" / "privacy_frontier.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _seed(task, attacker, ssim=0.30, floor=0.52):
    return {
        "task_accuracy": task,
        "attacker": attacker,
        "attacker_best": "gbm@pooled",
        "floor": floor,
        "chance": 0.5,
        "ssim": ssim,
        "mean_ssim": 0.28,
        "features_from": "tflite-int8 export",
    }


def _rows(fr):
    digits = fr.TARGETS["digits"]
    base = {0: _seed(0.986, 0.80), 1: _seed(0.980, 0.79), 2: _seed(0.990, 0.81)}
    good = {0: _seed(0.979, 0.54), 1: _seed(0.975, 0.55), 2: _seed(0.982, 0.53)}
    bad = {0: _seed(0.970, 0.54), 1: _seed(0.975, 0.56), 2: _seed(0.982, 0.53)}
    return [
        {"target": "digits", "method": "unprotected", "strength": "-", **fr.aggregate(base, base, digits)},
        {"target": "digits", "method": "adversary", "strength": "w3 (default)", **fr.aggregate(good, base, digits)},
        {"target": "digits", "method": "adversary", "strength": "w1", **fr.aggregate(bad, base, digits)},
    ]


def test_frontier_aggregate_intervals_and_goals_on_fixed_numbers():
    fr = _frontier()
    mean, low, high = fr.interval([0.90, 0.92, 0.94])
    # t(0.975, 2) = 4.3027; sd 0.02; half-width 4.3027 * 0.02 / sqrt(3) = 0.04968
    assert mean == pytest.approx(0.92) and high - mean == pytest.approx(0.04968, abs=1e-4)
    assert mean - low == pytest.approx(high - mean)
    assert math.isnan(fr.interval([0.9])[1])

    digits = fr.TARGETS["digits"]
    base = {0: _seed(0.986, 0.80), 1: _seed(0.980, 0.79), 2: _seed(0.990, 0.81)}
    good = {0: _seed(0.979, 0.54), 1: _seed(0.975, 0.55), 2: _seed(0.982, 0.53)}
    bad = {0: _seed(0.970, 0.54), 1: _seed(0.975, 0.56), 2: _seed(0.982, 0.53)}
    ok = fr.aggregate(good, base, digits)
    assert ok["goals_met"] == {"task_within_1pt": True, "attacker_within_limit": True, "ssim_within_limit": None}
    assert ok["task_accuracy"]["mean"] == pytest.approx((0.979 + 0.975 + 0.982) / 3)
    no = fr.aggregate(bad, base, digits)
    # seed 0 loses 1.6 points; seed 1's attacker 0.56 is above max(chance, floor) + 0.03 = 0.55
    assert no["goals"]["0"]["task_within_1pt"] is False and no["goals"]["1"]["task_within_1pt"] is True
    assert no["goals"]["1"]["attacker_within_limit"] is False
    assert no["goals_met"]["task_within_1pt"] is False and no["goals_met"]["attacker_within_limit"] is False
    celeba = fr.TARGETS["celeba"]
    high_ssim = fr.aggregate({0: _seed(0.9, 0.5, ssim=0.34)}, {0: _seed(0.9, 0.7)}, celeba)
    assert high_ssim["goals_met"]["ssim_within_limit"] is False  # 0.34 > mean-image 0.28 + 0.05

    rows = _rows(fr)
    assert rows[1]["goals_met"] == ok["goals_met"] and rows[2]["goals"] == no["goals"]
    text = fr.table(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    assert "0.985 ±0.013" in lines[2]  # unprotected: mean 0.9853, half-width 4.3027 * 0.00503 / sqrt(3) = 0.0125
    assert lines[3].rstrip().endswith("yes/yes/-") and lines[4].rstrip().endswith("NO/NO/-")
    assert "null" in lines[0] and " n/a " in lines[2]  # probed without --null
    # with the probe's null reading (--null): its mean across seeds beside the attacker, the goals unchanged
    nulled = {s: {**row, "null": value} for (s, row), value in zip(good.items(), (0.53, 0.55, 0.54))}
    with_null = fr.aggregate(nulled, base, digits)
    assert with_null["null"]["mean"] == pytest.approx(0.54) and with_null["goals_met"] == ok["goals_met"]
    text = fr.table([{"target": "digits", "method": "adversary", "strength": "w3", **with_null}])
    assert " 0.540 " in text.splitlines()[2]


def test_frontier_plot_on_fixed_numbers(tmp_path):
    fr = _frontier()
    rows = _rows(fr)
    points = fr.frontier_points(rows, "digits")
    assert [(p.method, p.label) for p in points] == [
        ("unprotected", "-"),
        ("adversary", "w3 (default)"),
        ("adversary", "w1"),
    ]
    assert points[1].attacker == pytest.approx(0.54) and points[1].task_interval[0] < points[1].task_accuracy
    from privsplit.report.feature_plots import plot_frontier

    path = plot_frontier(points, tmp_path / "frontier.png", floor=0.52, chance=0.5, title="digits")
    assert path.stat().st_size > 5000
    nulled = plot_frontier(points, tmp_path / "frontier-null.png", floor=0.52, chance=0.5, title="digits", null=0.55)
    assert nulled.read_bytes() != path.read_bytes()
    # the null line: the best attacker's chance level, labelled, only when measured
    import matplotlib.pyplot as plt

    from privsplit.report.feature_plots import _null_line

    fig, ax = plt.subplots()
    _null_line(ax, None, horizontal=False)
    assert ax.get_lines() == []
    _null_line(ax, 0.552, horizontal=False)
    (line,) = ax.get_lines()
    assert line.get_label() == "best attacker by chance 0.552" and list(line.get_xdata()) == [0.552, 0.552]
    plt.close(fig)
    assert fr.frontier_points(rows, "celeba") == []


def test_frontier_unforeseen_columns_read_the_probe_files(tmp_path):
    from privsplit.probes.attribute_sweep import AttributeExcess, AttributeSweepResult
    from privsplit.probes.linkage import LinkageResult, LinkageScore

    fr = _frontier()
    scores = (
        LinkageScore("cosine", 0.58, 0.04, 0.01, 0.002, null_auc=0.51),
        LinkageScore("lda", 0.55, 0.03, 0.0, 0.001),
    )
    LinkageResult(scores, 100, 100, 300, 900, 200, 200).save(tmp_path / "probe_linkage.tflite-int8.json")
    rows = tuple(
        AttributeExcess(name, ba, "logistic", 0.5, 0.52, 0.53, ba - 0.02, ba + 0.02)
        for name, ba in (("Bald", 0.70), ("Eyeglasses", 0.60), ("Young", 0.54))
    )
    AttributeSweepResult(rows, task="Smiling").save(tmp_path / "probe_attributes.tflite-int8.json")
    (tmp_path / "probe_features.tflite-int8.frames16.json").write_text(
        json.dumps({"attribute": {"balanced_accuracy": 0.62}})
    )
    row = fr.unforeseen_row(tmp_path, {"attribute": {"balanced_accuracy": 0.57}})
    assert row["frames16_raise"] == pytest.approx(0.05)
    assert row["linkage_auc"] == pytest.approx(0.58) and row["linkage_excess"] == pytest.approx(0.07)
    assert row["attributes_worst_excess"] == pytest.approx(0.17) and row["attributes_over_0_05"] == 2
    assert row["attributes_median_excess"] == pytest.approx(0.07)
    empty = fr.unforeseen_row(tmp_path / "none", {"attribute": {"balanced_accuracy": 0.5}})
    assert set(empty) == set(fr.UNFORESEEN) and all(v is None for v in empty.values())
    digits = fr.TARGETS["digits"]
    seeds = {s: {**_seed(0.98, 0.55), **row} for s in (0, 1)}
    agg = fr.aggregate(seeds, seeds, digits)
    assert agg["linkage_excess"]["mean"] == pytest.approx(0.07)
    text = fr.table([{"target": "digits", "method": "balanced", "strength": "default", **agg}])
    assert "linkage AUC" in text and "0.580" in text
