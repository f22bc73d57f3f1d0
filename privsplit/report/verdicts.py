"""What the report concludes from its figures: each best-of-N reading against its own chance level.

A best of several attackers on a finite holdout reads above chance when there is nothing to read (the winner's
curse). The probes record that chance level (the null: mean and 95th percentile of the best reading when the
labels say nothing); a reading inside the null's 95th percentile is not a measurable leak, and a difference
between two such readings is noise, not an effect.
"""

from __future__ import annotations

from collections.abc import Sequence

ATTACKER_NAMES = {
    "logistic": "logistic regression",
    "mlp": "an MLP",
    "cnn": "a CNN",
    "gbm": "gradient boosting (HistGradientBoostingClassifier)",
}

ATTACK_NAMES = {
    "confidence": "confidence",
    "loss": "loss",
    "entropy": "entropy",
    "modified_entropy": "modified entropy",
    "label_only": "label-only",
    "ml_leaks": "ML-Leaks",
    "nsh": "NSH",
    "shadow": "shadow model",
    "augmentation": "label-only augmentation",
    "lira_offline": "offline LiRA",
}

NO_MEMBERSHIP_LEAK = "no measurable membership leak on this target"


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def join_names(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def inside_null(value: float | None, q95: float | None) -> bool | None:
    """True when ``value`` sits inside the null's 95th percentile; None when either is unknown."""
    if value is None or q95 is None:
        return None
    return value <= q95


def membership_verdict(raw: dict, purified: dict, attacks: int) -> str:
    """One line on whether membership leaks at all, without and with the purifier.

    ``raw`` and ``purified``: the best attack's ``auc`` with ``null_best_auc`` (mean) and ``null_best_auc_q95``."""
    r, p = raw["auc"], purified["auc"]
    r_in, p_in = inside_null(r, raw.get("null_best_auc_q95")), inside_null(p, purified.get("null_best_auc_q95"))

    def level(side: dict) -> str:
        return f"mean {_f(side.get('null_best_auc'))}, 95th percentile {_f(side.get('null_best_auc_q95'))}"

    raw_level, pur_level = f"its chance level ({level(raw)})", f"its chance level ({level(purified)})"
    if r_in is None or p_in is None:
        return (
            f"Best attack AUC {_f(r)} without and {_f(p)} with the purifier. The probe did not record its chance "
            "level (a result written before privsplit 0.1's null): re-run `privsplit probe outputs` before reading "
            "a difference of a few thousandths as an effect."
        )
    if r_in and p_in:
        return (
            f"**Verdict: {NO_MEMBERSHIP_LEAK}.** The best of {attacks} attacks reads {_f(r)} without the purifier, "
            f"inside {raw_level}, and {_f(p)} with it, inside {pur_level}: the difference ({p - r:+.3f}) is noise, "
            "not an effect of the purifier."
        )
    if not r_in and p_in:
        return (
            f"**Verdict: membership leaks through the raw scores, not through the purified ones.** The best of "
            f"{attacks} attacks reads {_f(r)} without the purifier, above {raw_level}; with it {_f(p)}, inside "
            f"{pur_level}."
        )
    if r_in and not p_in:
        return (
            f"**Verdict: the purified scores leak membership measurably, the raw ones do not.** The best of {attacks} "
            f"attacks reads {_f(r)} without the purifier, inside {raw_level}, and {_f(p)} with it, above {pur_level}."
        )
    return (
        f"**Verdict: membership leaks measurably, with and without the purifier.** The best of {attacks} attacks "
        f"reads {_f(r)} without the purifier, above {raw_level}, and {_f(p)} with it ({r - p:+.3f} AUC taken off), "
        f"above {pur_level}."
    )


def feature_verdict(model: dict) -> str:
    """One line on one model's attribute leakage against its chance level and the task floor (a summary row)."""
    best, q95 = model["attribute_balanced_accuracy"], model.get("attribute_null_q95")
    floor = model["attribute_task_floor"]
    inside = inside_null(best, q95)
    if inside is None:
        return f"best attacker {_f(best)}; its chance level was not recorded (re-run `privsplit probe features`)"
    if inside:
        return (
            f"no measurable attribute leak: the best attacker reads {_f(best)}, inside its chance level "
            f"(95th percentile {_f(q95)})"
        )
    beyond = f"{best - floor:+.3f} over the task floor {_f(floor)}"
    return (
        f"measurable attribute leak: the best attacker reads {_f(best)}, above its chance level ({_f(q95)}); {beyond}"
    )
