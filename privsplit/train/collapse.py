"""No silent collapse: a protected run whose task the adversaries destroyed says so, and export refuses it.

A run has collapsed when its final reference accuracy (what the selected model scores on ``reference``)
gained less than a fifth of what separates the majority rate from a perfect score, or ended far below
the best the same run reached before the adversaries won.
"""

from __future__ import annotations

from dataclasses import dataclass

from privsplit.errors import RunError
from privsplit.results import from_dict, to_dict

NEAR_MAJORITY = 0.2  # final <= majority + this share of the way from the majority rate to a perfect score
FAR_BELOW = 0.10  # final more than 10 points under the run's peak reference accuracy


class TrainingCollapsed(RunError):
    """The adversaries won: the task is near the majority rate or far below the run's own peak."""


@dataclass(frozen=True)
class CollapseCheck:
    """The verdict on one trained run, kept in ``metrics.json`` under ``collapse``."""

    collapsed: bool
    final_accuracy: float  # reference accuracy of the model the run keeps
    peak_accuracy: float  # the best reference accuracy of any epoch of the run
    peak_epoch: int
    majority: float  # the majority rate of the task on reference
    reason: str = ""

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> CollapseCheck:
        return from_dict(cls, data)

    def message(self, run: str) -> str:
        return (
            f"protected training collapsed in {run}: {self.reason}; the adversaries won. Retrain with "
            "--privacy balanced (its controller eases the pressure when the task drops), a lower --adv-weight or "
            "another --seed; export refuses this run unless --force"
        )


def check_collapse(history: list[dict], final_accuracy: float, majority: float) -> CollapseCheck:
    """Judge a run from its epoch history (``reference_accuracy`` per epoch) and its final reference accuracy."""
    peak_epoch, peak = max(((h["epoch"], h["reference_accuracy"]) for h in history), key=lambda t: t[1])
    near = final_accuracy <= majority + NEAR_MAJORITY * (1.0 - majority)
    far = final_accuracy < peak - FAR_BELOW
    reason = ""
    if near:
        reason = f"reference accuracy {final_accuracy:.3f} is near the majority rate {majority:.3f}"
    elif far:
        drop = peak - final_accuracy
        reason = f"reference accuracy {final_accuracy:.3f} is {drop:.3f} under epoch {peak_epoch}'s {peak:.3f}"
    return CollapseCheck(near or far, final_accuracy, peak, peak_epoch, majority, reason)
