"""The readable text table of a :class:`FeatureLeakageResult` (attackers beside their yardsticks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from privsplit.run import noise_note

if TYPE_CHECKING:  # pragma: no cover
    from privsplit.probes.feature_results import FeatureLeakageResult


# A task floor this high means the task label determines the private attribute (e.g. digit -> parity).
DETERMINED_FLOOR = 0.99


def _f(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _ci(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{low:.3f}, {high:.3f}] 95%"


def summary_text(result: FeatureLeakageResult) -> str:
    c, h, w = result.feature_shape
    lines = [
        f"Feature leakage: {result.source}, task {result.task}; features {c}x{h}x{w} ({result.feature_dtype}, "
        f"from {result.features_from}); "
        f"attackers trained on {result.attacker_size} attacker images, scored on {result.holdout_size} holdout images",
        f"task accuracy (holdout): {_f(result.task_accuracy, '.4f')} "
        f"{noise_note(result.task_noise_sigma, result.task_noise_seed)}",
    ]
    att = result.attribute
    if att is None:
        lines.append("attribute inference: not run (the data has no private attribute)")
    else:
        curve = att.curve()
        sets = list(dict.fromkeys(t for scores in curve.values() for t in scores))
        sizes = {t: s.train_size for scores in curve.values() for t, s in scores.items()}
        col = max(10, *(len(t) + 2 for t in sets))
        lines += [
            "",
            f"attribute inference: {att.name} ({len(att.classes)} classes), holdout balanced accuracy per attacker "
            "(rows) and training set (columns; * = best)",
            f"  {'':<10}" + "".join(f"{t:>{col}}" for t in sets),
            f"  {'n train':<10}" + "".join(f"{_f(sizes[t], 'd') if sizes[t] else '':>{col}}" for t in sets),
        ]
        for family, scores in curve.items():
            cells = []
            for t in sets:
                score = scores.get(t)
                mark = "*" if score is not None and score is att.best_score else " "
                cells.append(f"{(_f(score.balanced_accuracy) + mark) if score else 'n/a ':>{col}}")
            lines.append(f"  {family:<10}" + "".join(cells))
        best = att.best_score
        lines += [
            f"  best attacker: {att.best} {_f(att.balanced_accuracy)} {_ci(best.ci_low, best.ci_high)}, "
            f"AUC {_f(att.auc)} ({best.selection})",
            f"  task floor (from the true task label alone)  {_f(att.task_floor)} "
            f"{_ci(*(att.task_floor_ci or (None, None)))}, AUC {_f(att.task_floor_auc)}",
            f"  chance: {_f(att.chance)}, AUC 0.500",
        ]
        if att.permutation_null_mean is not None:
            lines.append(
                f"  best attacker by chance (holdout labels permuted, 2,000 draws): mean "
                f"{_f(att.permutation_null_mean)}, 95th percentile {_f(att.permutation_null_q95)}"
            )
        if att.null_balanced_accuracy is not None:
            lines.append(
                f"  null (the best of the same {len(att.attackers)} attackers on features that carry nothing): "
                f"{_f(att.null_balanced_accuracy)} ({att.null_best}): what the best-of-all headline reads by chance "
                "on this holdout"
            )
        lines += [
            f"  leakage beyond the task: {att.balanced_accuracy - att.task_floor:+.3f} "
            "balanced accuracy over the floor",
        ]
        if att.task_floor >= DETERMINED_FLOOR:
            lines.append(
                f"  warning: the task label alone determines {att.name} (task floor {att.task_floor:.3f}): whatever "
                "does the task reveals it, and 'leakage beyond the task' measures only how far the attackers fall "
                "short of the label; choose a private attribute the task does not determine"
            )
    rec = result.reconstruction
    if rec is None:
        lines.append("reconstruction: not run")
    else:
        lines += [
            "",
            f"{f'reconstruction (decoder, best epoch {rec.best_epoch} of {rec.epochs})':<48}"
            f"{'SSIM':>9}{'PSNR dB':>9}{'MSE':>9}",
            f"  {'decoder':<46}{_f(rec.ssim):>9}{_f(rec.psnr, '.2f'):>9}{_f(rec.mse, '.4f'):>9}",
            f"  {'mean-image baseline':<46}"
            f"{_f(rec.baseline_ssim):>9}{_f(rec.baseline_psnr, '.2f'):>9}{_f(rec.baseline_mse, '.4f'):>9}",
        ]
    lines.append(f"\n(probe ran {result.runtime_s:.1f} s; seed {result.spec.seed})")
    return "\n".join(lines)
