"""The output-leakage probe: attacks on real trained targets, typed results, CLI, error messages."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from privsplit.cli.main import main
from privsplit.errors import RunError
from privsplit.probes.membership import Attack, ScoredRecords, ShadowData, run_attacks
from privsplit.run import RunFolder


def _constant(n: int, k: int, seed: int) -> ScoredRecords:
    probs = np.tile(np.linspace(1.0, 2.0, k) / np.linspace(1.0, 2.0, k).sum(), (n, 1)).astype(np.float32)
    return ScoredRecords(probs, np.random.default_rng(seed).integers(0, k, n))


def test_constant_scores_give_chance():
    """A target that returns the same vector for everyone leaks nothing: every attack sits near 0.5."""
    outcomes = run_attacks(
        _constant(300, 10, 0), _constant(300, 10, 1), ShadowData(_constant(100, 10, 2), _constant(100, 10, 3)), seed=0
    )
    assert set(outcomes) == set(Attack) - {Attack.AUGMENTATION, Attack.LIRA_OFFLINE}  # those need extra queries
    for attack, outcome in outcomes.items():
        assert abs(outcome.metrics.auc - 0.5) < 0.06, (attack, outcome.metrics.auc)
        assert outcome.metrics.n_members == outcome.metrics.n_nonmembers == 300


def test_run_without_purifier_names_train_purifier(digits_run, capsys):
    code = main(["probe", "outputs", str(digits_run)])
    assert code == RunError.exit_code
    assert "privsplit train-purifier" in capsys.readouterr().err


def test_too_few_members_for_a_balanced_test(tmp_path):
    from privsplit.models.purifier import Purifier, PurifierConfig
    from privsplit.probes.output_probe import probe_outputs
    from privsplit.train import TrainConfig, train_run

    run = train_run(
        "digits", tmp_path / "tiny", limit=100, image_size=8, config=TrainConfig.unprotected(epochs=1), progress=False
    )
    with pytest.raises(RunError, match="balanced membership test needs at least 50"):
        probe_outputs(run, purifier=Purifier(PurifierConfig(10)))


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory) -> RunFolder:
    """Digits at their native 8 px, 180 members, 40 epochs: members 100% vs holdout ~93%."""
    from privsplit.train import TrainConfig, train_run

    out = tmp_path_factory.mktemp("outputs") / "overfit"
    return train_run(
        "digits", out, limit=450, image_size=8, seed=0, config=TrainConfig.unprotected(epochs=40), progress=False
    )


@pytest.mark.slow
def test_cli_purifier_and_probe_on_an_overfit_target(overfit_run, tmp_path, capsys):
    from privsplit.probes.output_probe import OutputProbeResult

    run = RunFolder(tmp_path / "run")
    shutil.copytree(overfit_run.path, run.path)
    assert main(["train-purifier", str(run.path), "--epochs", "50", "--quiet"]) == 0
    assert run.has("purifier.json") and run.has("purifier.safetensors")
    report, plots = tmp_path / "out.json", tmp_path / "plots"
    assert main(["probe", "outputs", str(run.path), "--json", str(report), "--plots", str(plots), "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "without purifier" in out and "label floor" in out

    data = json.loads(report.read_text())
    assert data["schema_version"] == 2
    for key in ("accuracy", "accuracy_members", "accuracy_purified", "label_agreement", "distortion_pct"):
        assert isinstance(data[key], float), key
    for side in ("mia", "mia_purified"):
        assert {"auc", "advantage", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"} <= set(data[side]["best"])
        assert set(data[side]["attacks"]) == {a.value for a in Attack}
    for side in ("inversion", "inversion_purified"):
        assert {"mse", "ssim", "mse_members", "mse_nonmembers"} <= set(data[side])

    # the overfit target leaks well above chance and above its label floor
    assert data["accuracy_members"] == 1.0 and data["accuracy"] < 0.98
    assert data["mia"]["best"]["auc"] > 0.6
    assert data["mia"]["best"]["auc"] > data["mia"]["label_floor"] + 0.05
    assert data["mia"]["attacks"]["label_only"]["auc"] == pytest.approx(data["mia"]["label_floor"])
    # the best attack's chance level (labels redrawn): above 0.5 (a best of ten), far under the overfit leak
    for side in ("mia", "mia_purified"):
        null, q95 = data[side]["null_best_auc"], data[side]["null_best_auc_q95"]
        assert 0.5 < null < q95 < 0.66, (side, null, q95)  # 90 a side: one AUC's sd is 0.043
    assert data["mia"]["best"]["auc"] > data["mia"]["null_best_auc"] + 0.03
    assert "best AUC by chance" in out
    # the purifier keeps every label and removes most of the excess leakage (adaptive attacker)
    assert data["label_agreement"] == 1.0 and data["accuracy_purified"] == data["accuracy"]
    assert data["mia_purified"]["excess_auc"] < 0.5 * data["mia"]["excess_auc"]
    assert 0 < data["distortion_pct"] < 200

    result = OutputProbeResult.load(report)
    assert result.arrays is not None and len(result.arrays.is_member) == result.n_members + result.n_nonmembers
    assert result.to_json() == data
    assert json.loads(run.file("probe_outputs.json").read_text())["mia"] == data["mia"]
    for name in ("outputs_roc.png", "outputs_score_histograms.png", "outputs_inversion_grid.png"):
        assert (plots / name).stat().st_size > 5_000


@pytest.mark.slow
def test_swap_purifier_bounds_its_label_changes_and_costs_members_more(overfit_run, tmp_path):
    """On the overfit target the swap purifier changes at most its share of non-member labels (up to
    binomial sampling) and costs more accuracy on members than on non-members."""
    from privsplit.train.purifier import PurifierMode, PurifierTrainConfig, train_purifier

    run = RunFolder(tmp_path / "run")
    shutil.copytree(overfit_run.path, run.path)
    share = 0.1
    train_purifier(run, PurifierTrainConfig(mode=PurifierMode.SWAP, epochs=20, swap_share=share), progress=False)
    facts = run.read_json("purifier.json")["training"]
    hold, mem = facts["cost_holdout"], facts["cost_members"]
    changed = 1.0 - hold["label_agreement"]
    assert changed <= share + 3 * np.sqrt(share * (1 - share) / hold["records"])
    assert mem["accuracy_cost_points"] > hold["accuracy_cost_points"] >= 0
    assert mem["accuracy_purified"] < mem["accuracy"] == 1.0
    swap = facts["swap"]
    assert 0 < swap["swap_gate"] <= 1 and swap["members_eligible"] > swap["reference_eligible"]
    assert run.read_json("purifier.json")["config"]["swap_margin"] == facts["swap"]["swap_margin"]


@pytest.fixture(scope="module")
def overfit32(tmp_path_factory) -> RunFolder:
    """Digits at 32 px (a 1-px shift keeps the digit), 180 members, 30 epochs: memorised."""
    from privsplit.train import TrainConfig, train_run

    out = tmp_path_factory.mktemp("outputs") / "overfit32"
    return train_run("digits", out, limit=450, seed=0, config=TrainConfig.unprotected(epochs=30), progress=False)


@pytest.mark.slow
def test_augmentation_attack_beats_chance_and_ignores_a_label_keeping_purifier(overfit32):
    from privsplit.models.purifier import Purifier, PurifierConfig, purify_numpy
    from privsplit.probes.output_probe import OutputProbeSpec, observe

    view = observe(overfit32, OutputProbeSpec(seed=0, progress=False))
    purifier = Purifier(PurifierConfig(10, log_clamp=0.5)).eval()  # collapses almost every vector, keeps labels
    pure = view.purified(lambda p: purify_numpy(purifier, p))
    raw_out = run_attacks(view.members, view.nonmembers, view.shadow, extra=view.extra, seed=0)
    pur_out = run_attacks(pure.members, pure.nonmembers, pure.shadow, extra=pure.extra, seed=0)
    aug, aug_p = raw_out[Attack.AUGMENTATION].metrics, pur_out[Attack.AUGMENTATION].metrics
    assert aug.auc > 0.5 + 0.03  # beats chance on the memorised target
    assert aug_p.auc == aug.auc and aug_p.tpr_at_1pct_fpr == aug.tpr_at_1pct_fpr  # label-only: unaffected
    # while a score-reading attack is moved by the same purifier
    assert pur_out[Attack.CONFIDENCE].metrics.auc != raw_out[Attack.CONFIDENCE].metrics.auc
