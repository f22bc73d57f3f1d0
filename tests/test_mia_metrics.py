"""Membership-inference metric maths on hand-made scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privsplit.errors import ConfigError
from privsplit.probes.mia_metrics import best_auc_null, label_floor, mia_metrics, roc, tpr_at_fpr


def _labels(n_members: int, n_nonmembers: int) -> np.ndarray:
    return np.r_[np.ones(n_members), np.zeros(n_nonmembers)]


def test_perfect_separation():
    m = mia_metrics(_labels(4, 4), [5, 6, 7, 8, 1, 2, 3, 4])
    assert m.auc == 1.0 and m.advantage == 1.0
    assert m.tpr_at_1pct_fpr == 1.0 and m.tpr_at_01pct_fpr == 1.0
    assert (m.n_members, m.n_nonmembers) == (4, 4)


def test_reliably_wrong_attack_has_full_advantage():
    m = mia_metrics(_labels(3, 3), [1, 2, 3, 4, 5, 6])
    assert m.auc == 0.0
    assert m.advantage == 1.0  # max |TPR - FPR|: an inverted attack is as informative
    assert m.tpr_at_1pct_fpr == 0.0


def test_interleaved_scores_known_auc_and_advantage():
    # members 1,2,3,4 vs non-members 0.5,1.5,2.5,3.5: 10 of 16 pairs ordered -> AUC 0.625
    m = mia_metrics(_labels(4, 4), [1, 2, 3, 4, 0.5, 1.5, 2.5, 3.5])
    assert m.auc == pytest.approx(0.625)
    assert m.advantage == pytest.approx(0.25)


def test_constant_scores_are_chance():
    m = mia_metrics(_labels(50, 50), np.zeros(100))
    assert m.auc == 0.5 and m.advantage == 0.0
    # the ROC is the diagonal: TPR equals the FPR asked for
    assert m.tpr_at_1pct_fpr == pytest.approx(0.01)
    assert m.tpr_at_01pct_fpr == pytest.approx(0.001)


def test_tpr_at_low_fpr_reads_the_vertical_step():
    # 10 of 100 members score above every non-member; the rest below all of them
    scores = np.r_[np.full(10, 1000.0), np.full(90, -1.0), np.arange(100.0)]
    m = mia_metrics(_labels(100, 100), scores)
    assert m.tpr_at_01pct_fpr == pytest.approx(0.1)
    assert m.tpr_at_1pct_fpr == pytest.approx(0.1)
    assert m.min_resolvable_fpr == pytest.approx(0.01)
    curve = roc(_labels(100, 100), scores)
    assert tpr_at_fpr(curve, 0.0) == pytest.approx(0.1)  # top of the step at FPR 0
    assert tpr_at_fpr(curve, 1.0) == pytest.approx(1.0)


def test_json_round_trip_uses_the_issue_key():
    m = mia_metrics(_labels(4, 4), [1, 2, 3, 4, 0.5, 1.5, 2.5, 3.5])
    data = m.to_json()
    assert data["tpr_at_0.1pct_fpr"] == m.tpr_at_01pct_fpr and data["tpr_at_1pct_fpr"] == m.tpr_at_1pct_fpr
    assert "tpr_at_01pct_fpr" not in data  # the issue's spelling only
    assert type(m).from_json(data) == m


def test_label_floor_is_the_label_only_attack_auc():
    rng = np.random.default_rng(0)
    correct_m = rng.random(400) < 0.97
    correct_n = rng.random(400) < 0.8
    m = mia_metrics(_labels(400, 400), np.r_[correct_m, correct_n].astype(float))
    assert m.auc == pytest.approx(label_floor(correct_m.mean(), correct_n.mean()))


@pytest.mark.parametrize(
    "labels, scores",
    [([1, 0], [0.1]), ([1, 1], [0.1, 0.2]), ([1, 2], [0.1, 0.2]), ([1, 0], [0.1, np.nan])],
)
def test_bad_inputs_raise_config_errors(labels, scores):
    with pytest.raises(ConfigError):
        mia_metrics(labels, scores)


@settings(max_examples=60, deadline=None)
@given(
    members=st.lists(st.integers(-20, 20), min_size=1, max_size=30),
    nonmembers=st.lists(st.integers(-20, 20), min_size=1, max_size=30),
)
def test_auc_is_the_pairwise_probability(members, nonmembers):
    m, n = np.array(members, float), np.array(nonmembers, float)
    pairs = (m[:, None] > n[None, :]).mean() + 0.5 * (m[:, None] == n[None, :]).mean()
    result = mia_metrics(_labels(len(m), len(n)), np.r_[m, n])
    assert result.auc == pytest.approx(pairs)
    # the advantage bounds |TPR - FPR| at every threshold, and AUC is invariant to monotone maps
    for t in np.unique(np.r_[m, n]):
        assert result.advantage >= abs((m >= t).mean() - (n >= t).mean()) - 1e-12
    assert mia_metrics(_labels(len(m), len(n)), np.exp(np.r_[m, n] / 10)).auc == pytest.approx(result.auc)
    assert 0.0 <= result.tpr_at_01pct_fpr <= result.tpr_at_1pct_fpr <= 1.0


def test_purifier_bounds_collapse_frontier_on_hand_made_scores():
    """Members saturated; half the non-members at top 0.7 (the giveaway), half saturated; all correct."""
    from privsplit.probes.purifier_bounds import PurifierBounds, collapse_frontier

    sat, low = [0.999, 0.001], [0.7, 0.3]
    members = np.array([sat] * 100)
    nonmembers = np.array([low] * 50 + [sat] * 50)
    labels = np.zeros(100, dtype=int)
    floor, frontier = collapse_frontier(members, labels, nonmembers, labels, thresholds=(0.0, 0.8, 1.01))
    assert floor == pytest.approx(0.5)
    by = {p.threshold: p for p in frontier}
    # everything collapses: 2 (1 - t) per record, identical vectors -> no excess
    assert by[0.0].distortion_pct == pytest.approx(100 * (0.5 * 0.6 + 0.5 * 0.002))
    assert by[0.0].excess_auc == pytest.approx(0.0)
    # only the saturated collapse: cheap, and the 0.7 records still give themselves away
    assert by[0.8].distortion_pct == pytest.approx(100 * 0.5 * 0.002)
    assert by[0.8].excess_auc == pytest.approx(0.25)
    # nothing collapses: the loss attack separates the low half perfectly, ties on the rest
    assert by[1.01].distortion_pct == pytest.approx(0.0)
    assert by[1.01].excess_auc == pytest.approx(0.25)
    bounds = PurifierBounds(label_floor=floor, inversion_ceiling=1.0, frontier=frontier)
    assert bounds.min_distortion_for(0.02) == pytest.approx(30.1)
    assert bounds.excess_at(5.5) == pytest.approx(0.25)
    assert bounds.min_distortion_for(-1) is None


def test_tpr_at_1pct_and_01pct_fpr_on_a_hand_made_roc():
    """1000 non-members at scores 0..999, 100 members placed so the ROC's vertices are known exactly.

    Members 0-29 score above every non-member (TPR 0.30 at FPR 0); members 30-59 sit between the top
    10 and the next non-members (TPR 0.60 from FPR 0.01); members 60-79 tie with the 20 non-members
    at score 500 (a diagonal ROC segment from (0.499, 0.60) to (0.519, 0.80)); the rest below
    everything. TPR at 1% FPR: 0.60 (top of the vertical step); at 0.1% FPR: 0.30 (the flat part);
    at 50.9% FPR: halfway along the tie, 0.70.
    """
    nonmembers = np.r_[np.arange(1000.0 - 20), np.full(20, 500.0)]
    nonmembers[nonmembers >= 500] += 0.25  # keep the 480 others distinct from the tie at 500
    nonmembers[-20:] = 500.0
    between = np.sort(nonmembers)[-11] + 0.1  # above all but the top 10 non-members
    members = np.r_[np.full(30, 2000.0), np.full(30, between), np.full(20, 500.0), np.full(20, -5.0)]
    scores = np.r_[members, nonmembers]
    m = mia_metrics(_labels(100, 1000), scores)
    assert m.tpr_at_1pct_fpr == pytest.approx(0.60)
    assert m.tpr_at_01pct_fpr == pytest.approx(0.30)
    fpr_at_tie = float((nonmembers > 500).mean())
    assert tpr_at_fpr(roc(_labels(100, 1000), scores), fpr_at_tie + 0.01) == pytest.approx(0.70)


def test_sampling_intervals_match_their_formulas():
    from privsplit.probes.mia_metrics import auc_interval, mean_interval, proportion_interval

    # Hanley-McNeil at A = 0.5 with 100 members and 100 non-members
    a, n = 0.5, 100
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + (n - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (n * n))
    lo, hi = auc_interval(0.5, 100, 100)
    assert (lo, hi) == pytest.approx((0.5 - 1.959964 * se, 0.5 + 1.959964 * se), abs=1e-6)
    assert 0.15 < hi - lo < 0.17  # about +-0.08 for a hundred records a side: why every figure carries one
    assert auc_interval(1.0, 10, 10) == (1.0, 1.0)
    # Wilson: 0 successes of 10 -> upper end z^2 / (n + z^2)
    assert proportion_interval(0.0, 10)[1] == pytest.approx(1.959964**2 / (10 + 1.959964**2), abs=1e-6)
    assert mean_interval(np.array([1.0, 3.0])) == pytest.approx((2 - 1.959964, 2 + 1.959964), abs=1e-5)
    m = mia_metrics(_labels(100, 100), np.r_[np.arange(100.0), np.arange(100.0)])
    assert m.to_json()["auc_ci95"] == list(m.auc_ci95)
    with pytest.raises(ConfigError):
        auc_interval(0.6, 0, 10)


def test_best_auc_null_is_the_winners_curse_of_a_best_of_n():
    rng = np.random.default_rng(0)
    n = 250  # a side, as the Fashion-MNIST benchmark: one AUC's sd under the null is sqrt(501 / (12 n^2)) = 0.0258
    sd = np.sqrt((2 * n + 1) / (12 * n * n))
    one = {"a": rng.normal(size=2 * n)}
    mean, q95 = best_auc_null(one, n, permutations=4000, seed=1)
    assert mean == pytest.approx(0.5, abs=0.003) and q95 == pytest.approx(0.5 + 1.645 * sd, abs=0.005)
    # ten copies of one attack are one attack: the shared relabelling keeps their correlation
    assert best_auc_null({str(k): one["a"] for k in range(10)}, n, permutations=4000, seed=1) == (mean, q95)
    # ten independent attacks: the expected best of ten standard normals is 1.539 sd over 0.5
    ten = {str(k): rng.normal(size=2 * n) for k in range(10)}
    mean10, q95_10 = best_auc_null(ten, n, permutations=4000, seed=1)
    assert mean10 == pytest.approx(0.5 + 1.539 * sd, abs=0.004) and q95_10 > mean10 + sd
    # what the attacks actually score does not enter: the null reads only how the records rank
    assert best_auc_null({k: 5 * v + 3 for k, v in ten.items()}, n, permutations=4000, seed=1) == (mean10, q95_10)
    with pytest.raises(ConfigError, match="at least one attack"):
        best_auc_null({}, n)
    with pytest.raises(ConfigError, match="NaN"):
        best_auc_null({"a": np.full(2 * n, np.nan)}, n)
    with pytest.raises(ConfigError, match="same 500 records"):
        best_auc_null({"a": np.zeros(2 * n), "b": np.zeros(n)}, n)
    with pytest.raises(ConfigError, match="members and non-members both"):
        best_auc_null({"a": np.zeros(2 * n)}, 2 * n)
