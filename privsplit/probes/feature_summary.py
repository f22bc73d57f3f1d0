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


def summary_text(result: FeatureLeakageResult) -> str:
    c, h, w = result.feature_shape
    lines = [
        f"Feature leakage: {result.source}, task {result.task}; features {c}x{h}x{w} ({result.feature_dtype}); "
        f"attackers trained on {result.attacker_size} attacker images, scored on {result.holdout_size} holdout images",
        f"task accuracy (holdout): {_f(result.task_accuracy, '.4f')} "
        f"{noise_note(result.task_noise_sigma, result.task_noise_seed)}",
    ]
    att = result.attribute
    if att is None:
        lines.append("attribute inference: not run (the data has no private attribute)")
    else:
        width = 48
        lines += [
            "",
            f"{'attribute inference: ' + att.name + f' ({len(att.classes)} classes)':<{width}}"
            f"{'bal. acc':>9}{'AUC':>8}   selected on attacker data",
        ]
        for name, score in att.attackers.items():
            mark = "*" if name == att.best else " "
            lines.append(
                f"  {mark} {name:<{width - 4}}{_f(score.balanced_accuracy):>9}{_f(score.auc):>8}   {score.selection}"
            )
        lines += [
            f"  {'best attacker (' + att.best + ')':<{width - 2}}{_f(att.balanced_accuracy):>9}{_f(att.auc):>8}",
            f"  {'task floor (from the true task label alone)':<{width - 2}}"
            f"{_f(att.task_floor):>9}{_f(att.task_floor_auc):>8}",
            f"  {'chance':<{width - 2}}{_f(att.chance):>9}{_f(0.5):>8}",
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
