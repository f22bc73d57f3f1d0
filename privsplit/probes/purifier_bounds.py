"""What any label-preserving purifier can achieve on a given target: two limits, measured.

A purifier that keeps the predicted label (the kit's, and the paper's) is bounded on both fronts:

* **Inversion.** An attacker that sees the label can always output the mean image of that class, so
  against a retrained inversion decoder the purified MSE cannot exceed (about) the class-mean MSE.
  ``inversion_ceiling = class_mean_mse / raw_mse`` is the largest MSE ratio any such purifier can
  force; when the raw decoder already sits at the class-mean floor (the scores say nothing beyond
  the label) it is about 1.

* **Membership vs distortion.** Members of an overfit target are classified with (near) saturated
  confidence; a correctly classified non-member that is *not* saturated gives itself away. Moving its
  top probability ``t`` to saturation costs ``2 (1 - t)`` of L1 distortion, so the cheapest
  deterministic policy for a leakage target leaves the *least* confident records alone and saturates
  the rest: "collapse every vector whose top probability is at least ``a`` to one-hot". The frontier
  of that policy over ``a`` (L1 distortion on non-members; excess AUC of the loss attack over the
  label floor on the balanced member / non-member sets) is what :func:`collapse_frontier` returns. It
  is an **oracle** analysis (it looks at members' and non-members' scores together, which a purifier
  may not) and uses one attack, so real purifiers sit on or above it: it tells how much distortion a
  leakage target costs on this target, before any purifier is trained.

  With the attacker's shadow-model scores on the same records (``shadow_probs``, collapsed by the same
  policy: the attacker is adaptive) the frontier's excess is the larger of the loss attack's and
  offline LiRA's: a calibrated attack ranks collapsed records by how hard they are for models that
  never saw them, which the label floor does not count; a purifier measured against the probe's
  strongest attack is compared with a frontier measured against the same kind of attack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privsplit.probes.mia_metrics import label_floor, mia_metrics
from privsplit.results import to_dict

THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.999, 1.01)


@dataclass(frozen=True)
class FrontierPoint:
    threshold: float  # vectors whose top probability >= threshold collapse to one-hot
    distortion_pct: float  # 100 x mean L1 on the non-members
    excess_auc: float  # loss-attack AUC minus the label floor


@dataclass(frozen=True)
class PurifierBounds:
    label_floor: float
    inversion_ceiling: float | None
    frontier: tuple[FrontierPoint, ...]

    def min_distortion_for(self, max_excess: float) -> float | None:
        """Smallest frontier distortion whose excess is within ``max_excess`` (None if no point is)."""
        fits = [p.distortion_pct for p in self.frontier if p.excess_auc <= max_excess]
        return min(fits) if fits else None

    def least_distortion_for(self, excess: float) -> float | None:
        """Least oracle distortion that brings the excess to ``excess``, interpolated along the frontier.

        The frontier points, ordered by distortion, are joined by straight lines (mixing two collapse
        thresholds over records reaches any point between them); the answer is where the lower envelope
        of excess first falls to ``excess`` (None if it never does; 0 when no collapse is needed).
        """
        pts = sorted(self.frontier, key=lambda p: p.distortion_pct)
        best = []  # running minimum of the excess: the envelope, non-increasing in distortion
        for p in pts:
            e = p.excess_auc if not best else min(best[-1][1], p.excess_auc)
            best.append((p.distortion_pct, e))
        if best[0][1] <= excess:
            return best[0][0]
        for (d0, e0), (d1, e1) in zip(best, best[1:]):
            if e1 <= excess < e0:
                return d0 + (d1 - d0) * (e0 - excess) / (e0 - e1)
        return None

    def excess_at(self, max_distortion_pct: float) -> float | None:
        """Least frontier excess within a distortion budget."""
        fits = [p.excess_auc for p in self.frontier if p.distortion_pct <= max_distortion_pct]
        return min(fits) if fits else None

    def to_json(self) -> dict:
        return to_dict(self)


def _collapse(probs: np.ndarray, threshold: float) -> np.ndarray:
    out = probs.astype(np.float64, copy=True)
    rows = probs.max(axis=1) >= threshold
    onehot = np.zeros_like(out)
    onehot[np.arange(len(out)), probs.argmax(axis=1)] = 1.0
    out[rows] = onehot[rows]
    return out


def _loss_score(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-30, None))


def collapse_frontier(
    member_probs, member_labels, nonmember_probs, nonmember_labels, *, thresholds=THRESHOLDS, shadow_probs=None
) -> tuple[float, tuple[FrontierPoint, ...]]:
    """(label floor, frontier points) of the oracle collapse policy on balanced member / non-member sets.

    ``shadow_probs (S, n_members + n_nonmembers, K)``: shadow models' scores on the same records (members
    first); with them the excess is the larger of the loss attack's and offline LiRA's.
    """
    from privsplit.probes.calibrated_attacks import lira_offline_score

    member_probs, nonmember_probs = np.asarray(member_probs), np.asarray(nonmember_probs)
    is_member = np.r_[np.ones(len(member_probs), bool), np.zeros(len(nonmember_probs), bool)]
    floor = label_floor(
        float((member_probs.argmax(1) == member_labels).mean()),
        float((nonmember_probs.argmax(1) == nonmember_labels).mean()),
    )
    points = []
    for a in thresholds:
        qm, qn = _collapse(member_probs, a), _collapse(nonmember_probs, a)
        distortion = 100.0 * float(np.abs(nonmember_probs - qn).sum(axis=1).mean())
        auc = mia_metrics(is_member, np.r_[_loss_score(qm, member_labels), _loss_score(qn, nonmember_labels)]).auc
        if shadow_probs is not None:
            labels = np.r_[member_labels, nonmember_labels]
            shadows = np.stack([_collapse(sp, a) for sp in np.asarray(shadow_probs)])
            lira = lira_offline_score(np.r_[qm, qn], shadows, labels)
            auc = max(auc, mia_metrics(is_member, lira).auc)
        points.append(FrontierPoint(threshold=float(a), distortion_pct=distortion, excess_auc=float(auc - floor)))
    return floor, tuple(points)


def dense_thresholds(member_probs: np.ndarray, nonmember_probs: np.ndarray, n: int = 120) -> tuple[float, ...]:
    """:data:`THRESHOLDS` plus ``n`` quantiles of the top probabilities: the frontier at the records' own scale."""
    top = np.r_[np.asarray(member_probs).max(1), np.asarray(nonmember_probs).max(1)].astype(np.float64)
    qs = np.quantile(top, np.linspace(0.0, 1.0, n))
    return tuple(float(t) for t in np.unique(np.r_[THRESHOLDS, qs, np.nextafter(qs, 2.0)]))


def purifier_bounds(
    view,
    *,
    raw_inversion_mse: float | None = None,
    class_mean_mse: float | None = None,
    dense: bool = False,
    calibrated: bool = False,
) -> PurifierBounds:
    """Both limits for a :class:`~privsplit.probes.output_probe.ServiceView` (raw, unpurified scores).

    ``dense`` traces the frontier at :func:`dense_thresholds` (about 250 points) instead of :data:`THRESHOLDS`;
    ``calibrated`` adds offline LiRA on the view's shadow-model scores to the frontier's attacks.
    """
    m, n = view.members, view.nonmembers
    thresholds = dense_thresholds(m.probs, n.probs) if dense else THRESHOLDS
    shadow = view.extra.shadow if calibrated else None
    floor, frontier = collapse_frontier(
        m.probs, m.labels, n.probs, n.labels, thresholds=thresholds, shadow_probs=shadow
    )
    ceiling = None
    if raw_inversion_mse and class_mean_mse:
        ceiling = float(class_mean_mse / raw_inversion_mse)
    return PurifierBounds(label_floor=floor, inversion_ceiling=ceiling, frontier=frontier)
