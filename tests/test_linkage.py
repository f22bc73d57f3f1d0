"""Identity linkage probe: finds linkage that is there, none in noise, never tests a person it fitted on."""

import numpy as np
import pytest

from privsplit.errors import ConfigError, DataError
from privsplit.probes.linkage import (
    LinkageResult,
    LinkageSpec,
    gallery_and_probes,
    probe_linkage,
    split_identities,
    verification_pairs,
)


def _people(n_people=300, per_person=3, dim=64, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_people), per_person)
    codes = rng.standard_normal((n_people, dim))
    features = signal * codes[ids] + rng.standard_normal((len(ids), dim))
    return features.reshape(len(ids), 4, 4, 4), ids


def test_finds_linkage_that_is_there():
    x, ids = _people(signal=1.0)
    result = probe_linkage(x, ids, LinkageSpec(seed=0))
    for score in result.scores:
        assert score.auc > 0.95, score
        assert score.tpr_at_fpr_1pct > 0.5
        assert score.rank1 > 20 * result.rank1_chance
    assert result.null_auc is not None and abs(result.null_auc - 0.5) < 0.05
    assert result.auc_excess > 0.4


def test_finds_none_in_noise_and_reads_like_its_null():
    x, ids = _people(signal=0.0)
    result = probe_linkage(x, ids, LinkageSpec(seed=1))
    for score in result.scores:
        assert abs(score.auc - 0.5) < 0.05, score
        assert score.rank1 < 5 * result.rank1_chance
        assert score.tpr_at_fpr_1pct < 0.06
    assert abs(result.best.auc - result.null_auc) < 0.05
    assert result.auc_excess < 0.05


def test_learned_metric_beats_cosine_where_the_identity_lives_in_few_dimensions():
    # identity in 4 of 64 dimensions, the rest large nuisance variation: LDA finds the 4, cosine drowns in the rest
    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(300), 3)
    x = 3.0 * rng.standard_normal((len(ids), 64))
    x[:, :4] = rng.standard_normal((300, 4))[ids] * 1.0 + 0.3 * rng.standard_normal((len(ids), 4))
    result = probe_linkage(x, ids, LinkageSpec(seed=0, null=False))
    by_name = {s.attacker: s for s in result.scores}
    assert by_name["lda"].auc > by_name["cosine"].auc + 0.15
    assert result.best.attacker == "lda" and result.null_auc is None


def test_identities_are_disjoint_and_pairs_are_what_they_say():
    ids = np.repeat(np.arange(50), 4)
    spec = LinkageSpec(seed=5, negatives_per_positive=3)
    train, test = split_identities(ids, spec)
    assert not set(ids[train]) & set(ids[test])
    assert train.sum() + test.sum() == len(ids)
    pairs, same = verification_pairs(ids[test], spec)
    test_ids = ids[test]
    assert (test_ids[pairs[same, 0]] == test_ids[pairs[same, 1]]).all()
    assert (test_ids[pairs[~same, 0]] != test_ids[pairs[~same, 1]]).all()
    people = len(set(test_ids))
    assert same.sum() == people * 6 and (~same).sum() == 3 * same.sum()  # 4 images: 6 pairs each
    gallery, probes = gallery_and_probes(test_ids, spec)
    assert len(gallery) == people and len(set(test_ids[gallery])) == people
    assert len(probes) == len(test_ids) - people


def test_result_round_trips_through_json(tmp_path):
    x, ids = _people(n_people=60, signal=0.5)
    result = probe_linkage(x, ids)
    again = LinkageResult.from_json(result.to_json())
    assert again == result
    assert LinkageResult.load(result.save(tmp_path / "linkage.json")) == result
    assert "identity linkage on" in result.summary() and "rank-1" in result.summary()


def test_bad_input_is_named():
    x, ids = _people(n_people=20)
    with pytest.raises(DataError, match="feature rows"):
        probe_linkage(x, ids[:-1])
    with pytest.raises(DataError, match="at least 2 images"):
        probe_linkage(x[:20], np.arange(20))
    with pytest.raises(DataError, match="4 distinct"):
        probe_linkage(x[:6], ids[:6])
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        probe_linkage(bad, ids)
    with pytest.raises(ConfigError):
        LinkageSpec(negatives_per_positive=0)


def test_averaging_frames_recovers_the_noise_free_reading():
    from privsplit.probes.frames import averaged_encoder

    rng = np.random.default_rng(7)
    ids = np.repeat(np.arange(200), 3)
    codes = rng.standard_normal((200, 32))[ids]  # what an image shows, the same in every frame of it
    draws = np.random.default_rng(8)

    def noisy(index):  # the device: fresh channel noise (sigma 4) on every call
        return codes[index] + 4.0 * draws.standard_normal((len(index), 32))

    index = np.arange(len(ids))
    spec = LinkageSpec(seed=0, null=False)
    clean = probe_linkage(codes + 0.5 * rng.standard_normal(codes.shape), ids, spec).best.auc
    aucs = [probe_linkage(averaged_encoder(noisy, k)(index), ids, spec).best.auc for k in (1, 4, 64)]
    assert aucs[0] < aucs[1] < aucs[2]
    assert aucs[0] < clean - 0.2
    assert abs(aucs[2] - clean) < 0.03


def test_frames_must_be_a_positive_whole_number_or_the_noise_free_limit():
    from privsplit.probes.frames import Frames, averaged_encoder, check_frames

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="frames"):
            check_frames(bad)
    for text in ("0", "-3", "many", "2.5"):
        with pytest.raises(ConfigError, match="--frames"):
            Frames.parse(text)
    assert Frames.parse("16") == Frames(16) and Frames(16).tag == ".frames16" and Frames().tag == ""
    assert Frames.parse("inf").noise_free and Frames.parse("inf").tag == ".noisefree"
    with pytest.raises(ConfigError, match="noise-free"):
        Frames(4, noise_free=True)
    encode = lambda x: x  # noqa: E731
    assert averaged_encoder(encode, 1) is encode


def test_cli_refuses_identity_without_identities_and_frames_zero(digits_run, capsys):
    from privsplit.cli.main import main

    assert main(["probe", "features", str(digits_run), "--identity"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--identity needs identities" in err[0] and "drop --identity" in err[0]
    assert main(["probe", "features", str(digits_run), "--attributes", "Bald"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Bald is not a two-class label" in err[0]
    with pytest.raises(SystemExit) as exc:
        main(["probe", "features", str(digits_run), "--frames", "0"])
    assert exc.value.code == 2
    assert "--frames" in capsys.readouterr().err


def test_plots_draw_saved_results(tmp_path):
    from PIL import Image

    from privsplit.errors import RunError
    from privsplit.probes.attribute_sweep import AttributeExcess, AttributeSweepResult
    from privsplit.report.unforeseen_plots import plot_attribute_excess, plot_leakage_against_frames, plot_linkage_roc

    x, ids = _people(n_people=80, signal=0.7)
    linked = LinkageResult.load(probe_linkage(x, ids).save(tmp_path / "l.json"))
    rows = tuple(
        AttributeExcess(f"A{i}", 0.6 + 0.01 * i, "logistic@pooled", 0.5, 0.55, 0.52, 0.5, 0.7) for i in range(5)
    )
    sweeps = {
        "unprotected": AttributeSweepResult(rows, task="T"),
        "protected": AttributeSweepResult(rows[:3], task="T"),
    }
    paths = [
        plot_linkage_roc({"protected": linked}, tmp_path / "roc.png"),
        plot_attribute_excess(sweeps, tmp_path / "excess.png"),
        plot_leakage_against_frames({"Male": [(1, 0.56), (4, 0.6), (16, 0.68)]}, tmp_path / "k.png", baseline=0.58),
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    for plot in (plot_linkage_roc, plot_attribute_excess, plot_leakage_against_frames):
        with pytest.raises(RunError):
            plot({}, tmp_path / "none.png")
