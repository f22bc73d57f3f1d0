"""Membership-inference metrics from attack scores: AUC, attacker advantage, TPR at low FPR.

Every figure comes from scikit-learn's ROC tools (:func:`sklearn.metrics.roc_curve`,
:func:`sklearn.metrics.roc_auc_score`); nothing here hand-rolls a ROC.

Conventions: ``is_member`` is 1 for members (positives) and 0 for non-members; a *higher* score means
"more likely a member". The attacker advantage is ``max |TPR - FPR|`` over all thresholds (Yeom et al.;
an attack that is reliably *wrong* is as informative as one that is right, hence the absolute value).
TPR at a fixed FPR is read off the ROC curve by linear interpolation between its vertices (the ROC of
randomised thresholds), so it is well defined below the FPR resolution ``1 / n_nonmembers``;
:attr:`MIAMetrics.min_resolvable_fpr` says how far the data can actually resolve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privsplit.errors import ConfigError
from privsplit.results import from_dict, to_dict

LOW_FPRS = (0.01, 0.001)


@dataclass(frozen=True)
class MIAMetrics:
    """One attack's figures on one balanced member/non-member set."""

    auc: float
    advantage: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    n_members: int
    n_nonmembers: int

    @property
    def min_resolvable_fpr(self) -> float:
        return 1.0 / self.n_nonmembers

    @property
    def auc_ci95(self) -> tuple[float, float]:
        return auc_interval(self.auc, self.n_members, self.n_nonmembers)

    def to_json(self) -> dict:
        data = to_dict(self)
        data["auc_ci95"] = list(self.auc_ci95)
        # the JSON key spells the FPR the way the issue names it
        data["tpr_at_0.1pct_fpr"] = data.pop("tpr_at_01pct_fpr")
        return data

    @classmethod
    def from_json(cls, data: dict) -> MIAMetrics:
        data = dict(data)
        data["tpr_at_01pct_fpr"] = data.pop("tpr_at_0.1pct_fpr")
        return from_dict(cls, data)


@dataclass(frozen=True, eq=False)
class RocCurve:
    """The ROC vertices sklearn returns (kept for the plots)."""

    fpr: np.ndarray
    tpr: np.ndarray


def _check(is_member: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(is_member).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ConfigError(f"membership labels ({y.shape[0]}) and attack scores ({s.shape[0]}) differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ConfigError("membership labels must be 0 (non-member) or 1 (member)")
    if y.sum() == 0 or y.sum() == len(y):
        raise ConfigError("membership metrics need both members and non-members")
    if not np.isfinite(s).all():
        raise ConfigError("attack scores contain NaN or infinity")
    return y, s


def roc(is_member: np.ndarray, scores: np.ndarray) -> RocCurve:
    from sklearn.metrics import roc_curve

    y, s = _check(is_member, scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return RocCurve(fpr=fpr, tpr=tpr)


def tpr_at_fpr(curve: RocCurve, fpr: float) -> float:
    """TPR of the ROC curve at ``fpr``, linearly interpolated between vertices.

    sklearn's curve is non-decreasing in FPR with possibly several vertices at one FPR (a vertical
    step); the upper end of such a step is what an attacker can achieve, so ties take the maximum TPR.
    """
    uniq = np.unique(curve.fpr)
    best = np.array([curve.tpr[curve.fpr == u].max() for u in uniq])
    return float(np.interp(fpr, uniq, best))


def mia_metrics(is_member: np.ndarray, scores: np.ndarray) -> MIAMetrics:
    """AUC, advantage and TPR at 1% / 0.1% FPR of ``scores`` (higher = member)."""
    from sklearn.metrics import roc_auc_score

    y, s = _check(is_member, scores)
    curve = roc(y, s)
    return MIAMetrics(
        auc=float(roc_auc_score(y, s)),
        advantage=float(np.max(np.abs(curve.tpr - curve.fpr))),
        tpr_at_1pct_fpr=tpr_at_fpr(curve, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(curve, 0.001),
        n_members=int(y.sum()),
        n_nonmembers=int(len(y) - y.sum()),
    )


def best_auc_null(
    scores: dict[str, np.ndarray], n_members: int, *, permutations: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """The best of these attacks' AUCs when membership says nothing: the member/non-member labels of the same
    records drawn again at random (one draw shared by every attack, so their correlation is kept),
    ``permutations`` times. Returns the mean and the 95th percentile of the best AUC: the best of several attacks
    on a few hundred records reads above 0.5 by chance (the winner's curse), and this is its chance level.

    ``scores``: each attack's scores on the same records, members first (``n_members``), then non-members.
    """
    from scipy.stats import rankdata

    if not scores:
        raise ConfigError("the permutation null needs at least one attack's scores")
    columns = [np.asarray(v, dtype=np.float64).ravel() for v in scores.values()]
    n = len(columns[0])
    if any(len(c) != n for c in columns) or not 0 < n_members < n:
        raise ConfigError(f"the attacks' scores must cover the same {n} records, members and non-members both")
    if not all(np.isfinite(c).all() for c in columns):
        raise ConfigError("attack scores contain NaN or infinity")
    ranks = np.stack([rankdata(c) for c in columns])  # ties share their mean rank, as the AUC counts them
    n_neg = n - n_members
    rng = np.random.default_rng([seed, 0x6E756C6C])
    best = np.empty(permutations)
    for i in range(permutations):
        members = rng.choice(n, size=n_members, replace=False)
        best[i] = ((ranks[:, members].sum(1) - n_members * (n_members + 1) / 2) / (n_members * n_neg)).max()
    return float(best.mean()), float(np.quantile(best, 0.95))


Z95 = 1.959963984540054


def auc_interval(auc: float, n_pos: int, n_neg: int, *, z: float = Z95) -> tuple[float, float]:
    """95% interval of an AUC from ``n_pos`` members and ``n_neg`` non-members (Hanley & McNeil 1982).

    ``SE^2 = (A(1-A) + (n_pos-1)(Q1-A^2) + (n_neg-1)(Q2-A^2)) / (n_pos n_neg)``, ``Q1 = A/(2-A)``,
    ``Q2 = 2A^2/(1+A)``; clipped to [0, 1]. (The best of several attacks is picked on the same data, so
    its interval is a little optimistic.)
    """
    if n_pos < 1 or n_neg < 1:
        raise ConfigError("an AUC interval needs at least one member and one non-member")
    a = float(auc)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = z * float(np.sqrt(max(var, 0.0)))
    return max(0.0, a - half), min(1.0, a + half)


def proportion_interval(p: float, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson 95% interval of a proportion (an accuracy, a TPR, a label agreement) seen on ``n`` records."""
    if n < 1:
        raise ConfigError("a proportion interval needs at least one record")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: np.ndarray, *, z: float = Z95) -> tuple[float, float]:
    """Normal 95% interval of a mean over records (e.g. the L1 distortion)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) < 2:
        raise ConfigError("a mean interval needs at least two values")
    m, half = float(v.mean()), z * float(v.std(ddof=1)) / np.sqrt(len(v))
    return m - half, m + half


def label_floor(member_accuracy: float, nonmember_accuracy: float) -> float:
    """AUC of the label-only attack (score 1 when the prediction is correct) on a balanced set.

    ``0.5 + (acc_members - acc_nonmembers) / 2``: the leakage no label-preserving purifier can remove.
    """
    return 0.5 + (member_accuracy - nonmember_accuracy) / 2.0
