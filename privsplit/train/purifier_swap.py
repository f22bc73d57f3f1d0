"""The label-changing purifier (``privsplit train-purifier --mode swap``): calibration and its costs.

A label-keeping purifier cannot go below the label floor ``0.5 + (acc_members - acc_nonmembers) / 2``:
the label alone tells members (almost always right) from non-members. Purifier's label swapper (Yang
et al. 2023) closes that gap by giving a *wrong* label to a small share of records that look like
members. Here a record looks like a member when its log-margin ``log p_1 - log p_2`` is at least
``swap_margin``, and a deterministic gate in ``[0, 1)`` computed from its own scores picks the share
``swap_gate`` of those (:func:`privsplit.models.purifier.swap_member_like`).

Calibration, on the defender's own data: ``reference`` (non-members) and ``members`` (its training
set, as the paper's swapper uses; two numbers are read off it):

* ``swap_margin``: the margin that ``MEMBER_COVERAGE`` (95%) of the members reach -- "looks like a
  member" means at least as confident as nearly every member. (With label smoothing members sit in a
  narrow band of confidence; the most confident non-members can lie above it: they are eligible too.)
* ``swap_gate``: the share of eligible records to swap: the least of 1, ``swap_share / e_reference``
  (so at most ``swap_share`` of non-members change label) and ``gap / (e_members - e_reference)``
  (members' accuracy falls to the non-members', no further: swapping more would make members *less*
  accurate, which leaks as much the other way). ``e``: the share of correct, eligible records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privsplit.errors import ConfigError
from privsplit.models.purifier import log_margin, swap_gate_value
from privsplit.results import to_dict

MEMBER_COVERAGE = 0.95


@dataclass(frozen=True)
class SwapCalibration:
    swap_margin: float
    swap_gate: float
    reference_eligible: float  # share of reference records at or above the margin
    members_eligible: float
    accuracy_gap: float  # accuracy on members minus on reference, before the swap

    def to_json(self) -> dict:
        return to_dict(self)


def margins(probs: np.ndarray) -> np.ndarray:
    return log_margin(torch.as_tensor(probs, dtype=torch.float32)).numpy().astype(np.float64)


def gates(probs: np.ndarray) -> np.ndarray:
    return swap_gate_value(torch.as_tensor(probs, dtype=torch.float32)).numpy().astype(np.float64)


def calibrate_swap(
    ref_probs: np.ndarray, ref_labels: np.ndarray, member_probs: np.ndarray, member_labels: np.ndarray, *, share: float
) -> SwapCalibration:
    """``swap_margin`` from members' margins, ``swap_gate`` bounded by ``share`` on reference and by the gap."""
    if not 0 < share < 1:
        raise ConfigError(f"the swap share must be in (0, 1), got {share}")
    if len(member_probs) == 0 or len(ref_probs) == 0:
        raise ConfigError("the swap calibration needs outputs on members and on reference records")
    m = float(np.quantile(margins(member_probs), 1.0 - MEMBER_COVERAGE))

    def shares(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
        correct = probs.argmax(1) == labels
        eligible = margins(probs) >= m
        return float(correct.mean()), float(eligible.mean()), float((eligible & correct).mean())

    acc_r, elig_r, e_r = shares(ref_probs, ref_labels)
    acc_m, elig_m, e_m = shares(member_probs, member_labels)
    gap = acc_m - acc_r
    gate = 1.0 if elig_r <= share else share / elig_r
    if gap <= 0 or e_m <= e_r:
        gate = 0.0
    else:
        gate = min(gate, gap / (e_m - e_r))
    return SwapCalibration(
        swap_margin=m, swap_gate=float(gate), reference_eligible=elig_r, members_eligible=elig_m, accuracy_gap=gap
    )


@dataclass(frozen=True)
class LabelCost:
    """What a purifier costs on one part: label agreement with the classifier, accuracy before and after."""

    records: int
    label_agreement: float
    accuracy: float
    accuracy_purified: float

    @property
    def accuracy_cost_points(self) -> float:
        return 100.0 * (self.accuracy - self.accuracy_purified)

    @classmethod
    def measure(cls, probs: np.ndarray, purified: np.ndarray, labels: np.ndarray) -> LabelCost:
        return cls(
            records=int(len(labels)),
            label_agreement=float((probs.argmax(1) == purified.argmax(1)).mean()),
            accuracy=float((probs.argmax(1) == labels).mean()),
            accuracy_purified=float((purified.argmax(1) == labels).mean()),
        )

    def to_json(self) -> dict:
        return {**to_dict(self), "accuracy_cost_points": self.accuracy_cost_points}
