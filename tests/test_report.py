"""The report reads its own chance levels: built from saved results (no training), its text and its plot.

A run folder is written from the public result types (tests/results_samples.py) with the figures the digits
quickstart measured: a best-of-ten membership AUC of 0.533 raw and 0.538 purified, both inside the best attack's
chance level (about 0.52, 95th percentile 0.54). The report must say there is no measurable membership leak, not
that the purifier added 0.005.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from results_samples import samples

from privsplit.probes.attribute_attack import best_balanced_accuracy_null
from privsplit.probes.mia_metrics import MIAMetrics
from privsplit.probes.output_results import MIAReport
from privsplit.report.build import build_document, build_report
from privsplit.report.document import to_markdown
from privsplit.report.quickstart_plots import privacy_utility_figure
from privsplit.report.summary import build_summary
from privsplit.report.verdicts import NO_MEMBERSHIP_LEAK, membership_verdict

TEN = ("confidence", "loss", "entropy", "modified_entropy", "label_only", "ml_leaks", "nsh", "shadow")


def _mia(best: float, null: tuple[float, float]) -> MIAReport:
    attacks = {
        name: MIAMetrics(
            auc=best - 0.01 * i,
            advantage=0.05,
            tpr_at_1pct_fpr=0.01,
            tpr_at_01pct_fpr=0.0,
            n_members=359,
            n_nonmembers=359,
        )
        for i, name in enumerate(TEN)
    }
    return MIAReport.from_metrics(0.503, attacks, null=null)


def _run_folder(tmp_path, raw: float, purified: float):
    """A run folder as `privsplit train` + `probe features` + `probe outputs` leave it, with chosen figures."""
    s = samples()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(s["config.json"][0].to_json()))
    (run / "metrics.json").write_text(json.dumps({"task": {"majority_baseline": 0.1}, "train_seconds": 3.0}))
    features = s["probe_features.json"][0]
    attribute = replace(features.attribute, permutation_null_mean=0.531, permutation_null_q95=0.561)
    spec = replace(features.spec, curve=(1.0,), pooled=False)  # the quickstart's reduced probe
    replace(features, attribute=attribute, task_accuracy=0.97, spec=spec).save(run / "probe_features.json")
    outputs = s["probe_outputs.json"][0]
    outputs = replace(outputs, mia=_mia(raw, (0.520, 0.547)), mia_purified=_mia(purified, (0.516, 0.540)), arrays=None)
    outputs.save(run / "probe_outputs.json")
    return run


def test_no_measurable_leak_when_both_sit_inside_the_null(tmp_path):
    run = _run_folder(tmp_path, raw=0.533, purified=0.538)
    paths = build_report(run)
    summary = json.loads(paths.summary.read_text())
    o = summary["outputs"]
    assert (o["raw"]["null_best_auc"], o["raw"]["null_best_auc_q95"]) == (0.520, 0.547)
    assert (o["purified"]["null_best_auc"], o["purified"]["null_best_auc_q95"]) == (0.516, 0.540)
    assert o["leak_measurable"] == {"raw": False, "purified": False}
    assert o["attacks"] == list(TEN)
    md = paths.markdown.read_text()
    assert NO_MEMBERSHIP_LEAK in md
    assert "0.520 / 0.547" in md and "0.516 / 0.540" in md  # both nulls beside the best AUCs
    assert "noise, not an effect of the purifier" in md
    assert "shadow model" in md and "modified entropy" in md and "ML-Leaks" in md  # the attacks that ran, by name
    assert "augmentation" not in md and "LiRA" not in md  # ... and none that did not
    # the feature section: the attackers that ran, what did not, and the permutation null beside the best
    m = summary["models"][0]
    assert m["probe"]["attackers"] == ["logistic", "mlp"] and m["attribute_null_q95"] == 0.561
    assert "logistic regression and an MLP" in md and "a CNN" not in md
    assert "Not run in this probe" in md and "gradient boosting" in md and "pooled training set" in md
    assert "0.531 / 0.561" in md
    assert "measurable attribute leak: the best attacker reads 0.640" in md  # 0.64 > 0.561
    assert "html" in paths.html.suffix and NO_MEMBERSHIP_LEAK in paths.html.read_text()


@pytest.mark.parametrize(
    ("raw", "purified", "expect"),
    [
        (0.70, 0.538, "membership leaks through the raw scores, not through the purified ones"),
        (0.70, 0.60, "membership leaks measurably, with and without the purifier"),
        (0.533, 0.60, "the purified scores leak membership measurably"),
    ],
)
def test_verdict_follows_the_numbers(raw, purified, expect):
    line = membership_verdict(
        {"auc": raw, "null_best_auc": 0.52, "null_best_auc_q95": 0.547},
        {"auc": purified, "null_best_auc": 0.516, "null_best_auc_q95": 0.540},
        10,
    )
    assert expect in line and NO_MEMBERSHIP_LEAK not in line


def test_verdict_without_a_recorded_null_says_so():
    line = membership_verdict({"auc": 0.533}, {"auc": 0.538}, 10)
    assert "did not record its chance level" in line and NO_MEMBERSHIP_LEAK not in line


def test_permutation_null_of_the_best_attacker():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 359)
    one = {"a": rng.integers(0, 2, 359)}
    many = {str(i): rng.integers(0, 2, 359) for i in range(12)}
    mean1, q1 = best_balanced_accuracy_null(y, one, permutations=2000)
    mean12, q12 = best_balanced_accuracy_null(y, many, permutations=2000)
    assert abs(mean1 - 0.5) < 0.005 and 0.53 < q1 < 0.56  # one attacker: chance, sd ~ 0.026 on 359 records
    assert mean12 > mean1 + 0.02 and q12 > q1  # the winner's curse grows with the number of attackers
    same = {str(i): one["a"] for i in range(12)}  # identical attackers: no curse at all
    assert best_balanced_accuracy_null(y, same, permutations=2000) == (mean1, q1)
    # a perfect attacker's null is still chance: the permutation breaks what it knew
    assert abs(best_balanced_accuracy_null(y, {"p": y}, permutations=500)[0] - 0.5) < 0.01


def _quickstart_like_summary(tmp_path) -> dict:
    run = _run_folder(tmp_path, raw=0.533, purified=0.538)
    summary = build_summary(run)
    base = summary["models"][0]
    # the digits quickstart's points: the protected model and its int8 export nearly coincide (their labels
    # overlapped), and the task floor (0.478) lies left of every attacker reading (it fell off the axes)
    summary["models"] = [
        {**base, "name": "unprotected", "task_accuracy": 0.989, "attribute_balanced_accuracy": 0.90},
        {**base, "name": "protected-adv0", "task_accuracy": 0.981, "attribute_balanced_accuracy": 0.75},
        {**base, "name": "protected", "task_accuracy": 0.971, "attribute_balanced_accuracy": 0.681},
    ]
    for m in summary["models"]:
        m.update(attribute_task_floor=0.478, attribute_chance=0.5, attribute_null_q95=0.56, reconstruction_ssim=0.7)
    summary["artefacts"] = [
        {"format": "pytorch", "task_accuracy": 0.971, "attribute_balanced_accuracy": 0.681},
        {
            "format": "tflite-int8",
            "task_accuracy": 0.969,
            "attribute_balanced_accuracy": 0.684,
            "reconstruction_ssim": 0.7,
        },
        {
            "format": "onnx-int8",
            "task_accuracy": 0.970,
            "attribute_balanced_accuracy": 0.679,
            "reconstruction_ssim": 0.7,
        },
    ]
    return summary


def test_privacy_utility_plot_names_every_point_and_holds_the_floor(tmp_path):
    summary = _quickstart_like_summary(tmp_path)
    fig = privacy_utility_figure(summary)
    attacker_axis, ssim_axis = fig.axes[:2]
    low, high = attacker_axis.get_xlim()
    for line in (0.478, 0.5, 0.56, 0.681, 0.684, 0.90):  # task floor, chance, null, every point
        assert low < line < high
    ylow, yhigh = attacker_axis.get_ylim()
    assert ylow < 0.969 and 0.989 < yhigh
    # no text placed beside a point (which is where "protected" and "tflite-int8" overlapped): the legend names them
    for ax in (attacker_axis, ssim_axis):
        assert [t.get_text() for t in ax.texts] == []
    labels = [t.get_text() for t in attacker_axis.get_legend().get_texts()]
    for name in ("protected", "protected as tflite-int8", "protected as onnx-int8", "task floor"):
        assert name in labels
    assert "best attacker by chance (95th pct)" in labels
    # the legend sits below the panel, outside the data area
    fig.canvas.draw()
    legend_box = attacker_axis.get_legend().get_window_extent()
    assert legend_box.y1 <= attacker_axis.get_window_extent().y0
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_document_builds_from_a_summary_without_nulls(tmp_path):
    """Older probe files (no null recorded) still give a report, which says the chance level is missing."""
    summary = _quickstart_like_summary(tmp_path)
    summary["artefacts"] = []
    for side in ("raw", "purified"):
        summary["outputs"][side].update(null_best_auc=None, null_best_auc_q95=None)
    for m in summary["models"]:
        m.update(attribute_null_mean=None, attribute_null_q95=None)
    md = to_markdown(build_document(summary, {}), relative_to=tmp_path)
    assert "did not record its chance level" in md and "its chance level was not recorded" in md


def test_the_unforeseen_section_reads_frames_linkage_and_attributes(tmp_path):
    """Repeated frames against one frame (and the +0.01 goal), linkage and the sweep, read from the run's files."""
    from privsplit.probes.attribute_sweep import AttributeExcess, AttributeSweepResult
    from privsplit.probes.linkage import LinkageResult, LinkageScore
    from privsplit.report.document import Document
    from privsplit.report.unforeseen import add_unforeseen_section, unforeseen_summary

    run = _run_folder(tmp_path, 0.533, 0.538)
    one = json.loads((run / "probe_features.json").read_text())
    for name, ba in (
        ("probe_features.tflite-int8.json", 0.570),
        ("probe_features.tflite-int8.frames16.json", 0.575),
        ("probe_features.tflite-int8.frames16.jitter2.json", 0.640),
    ):
        (run / name).write_text(json.dumps({**one, "attribute": {**one["attribute"], "balanced_accuracy": ba}}))
    scores = (LinkageScore("cosine", 0.585, 0.04, 0.01, 0.001, null_auc=0.503),)
    LinkageResult(scores, 100, 120, 300, 900, 240, 240).save(run / "probe_linkage.tflite-int8.json")
    rows = tuple(
        AttributeExcess(n, ba, "mlp", 0.5, 0.55, 0.53, ba - 0.02, ba + 0.02)
        for n, ba in (("Bald", 0.70), ("Young", 0.56))
    )
    AttributeSweepResult(rows, task="Smiling").save(run / "probe_attributes.tflite-int8.json")

    u = unforeseen_summary(run, "celeba:somewhere", noise_keying="frame")
    assert [(r["source"], r["frames"], r["jitter"]) for r in u["frames"]] == [
        ("torch", 1, 0.0),
        ("tflite-int8", 1, 0.0),
        ("tflite-int8", 16, 0.0),
        ("tflite-int8", 16, 2.0),
    ]
    assert u["linkage"][0]["excess"] == pytest.approx(0.082) and u["attributes"][0]["over_goal"] == ["Bald"]
    doc = Document("t", "s")
    add_unforeseen_section(doc, u, {})
    md = to_markdown(doc, relative_to=tmp_path)
    assert "mean of 16: 0.575 against 0.570 for one frame (+0.005; within the +0.01 goal)" in md
    assert "sensor noise 2 grey levels: 0.640 against 0.570 for one frame (+0.070; **over** the +0.01 goal)" in md
    assert "keys its channel noise on a device secret and the frame" in md
    assert "Bald (+0.150)" in md and "0.585 (cosine)" in md

    digits = unforeseen_summary(tmp_path / "nothing", "digits", noise_keying="fresh")
    doc = Document("t", "s")
    add_unforeseen_section(doc, digits, {})
    md = to_markdown(doc, relative_to=tmp_path)
    assert "Identity linkage: not measured (digits has no identities" in md
    assert "Repeated frames: not measured" in md and "shrinks the noise by √K" in md
