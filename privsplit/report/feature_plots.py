"""Figures of the feature-leakage probe, drawn from a saved :class:`FeatureLeakageResult` (never recomputed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from privsplit.errors import RunError
from privsplit.report._figures import pyplot as _pyplot
from privsplit.report._figures import save
from privsplit.report._figures import show_image as _show

if TYPE_CHECKING:  # pragma: no cover
    from privsplit.probes.feature_results import FeatureLeakageResult


def plot_reconstruction_grid(result: FeatureLeakageResult, path: str | Path, *, per_row: int = 8) -> Path:
    """Holdout originals (upper row of each pair) over the decoder's reconstructions (lower row).

    The last column of the first pair shows the mean attacker image, the baseline's prediction.
    """
    rec = result.reconstruction
    if rec is None or rec.samples is None or len(rec.samples.originals) == 0:
        raise RunError("the result holds no reconstruction samples: run the probe with reconstruction on")
    plt = _pyplot()
    originals, recons = rec.samples.originals, rec.samples.reconstructions
    n = len(originals)
    per_row = min(per_row, n)
    pairs = (n + per_row - 1) // per_row
    cols = per_row + 1
    fig, axes = plt.subplots(2 * pairs, cols, figsize=(1.2 * cols, 1.25 * 2 * pairs), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, per_row)
        for row, images in ((2 * r, originals), (2 * r + 1, recons)):
            ax = axes[row, c]
            ax.axis("on")
            _show(ax, images[i])
    for pair in range(pairs):
        axes[2 * pair, 0].set_ylabel("original", fontsize=8)
        axes[2 * pair + 1, 0].set_ylabel("decoded", fontsize=8)
    axes[1, cols - 1].axis("on")
    _show(axes[1, cols - 1], rec.samples.mean_image)
    axes[1, cols - 1].set_title("mean image", fontsize=7)
    fig.suptitle(
        f"Reconstruction from features {'x'.join(map(str, result.feature_shape))} ({result.source})\n"
        f"SSIM {rec.ssim:.3f} (mean-image baseline {rec.baseline_ssim:.3f}), "
        f"PSNR {rec.psnr:.1f} dB ({rec.baseline_psnr:.1f}), holdout n={result.holdout_size}",
        fontsize=8,
    )
    return save(fig, path, dpi=120)


def plot_attribute_leakage(result: FeatureLeakageResult, path: str | Path) -> Path:
    """Each attacker's holdout balanced accuracy as a bar, with chance and the task floor as lines."""
    att = result.attribute
    if att is None:
        raise RunError("the result has no attribute inference (the data has no private attribute)")
    plt = _pyplot()
    names = list(att.attackers)
    values = [att.attackers[k].balanced_accuracy for k in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 3.2))
    colors = ["tab:red" if k == att.best else "tab:blue" for k in names]
    bars = ax.bar(names, values, color=colors, width=0.6)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.axhline(att.chance, color="gray", linestyle=":", label=f"chance {att.chance:.3f}")
    ax.axhline(att.task_floor, color="black", linestyle="--", label=f"task floor {att.task_floor:.3f}")
    ax.set_ylim(min(att.chance, min(values)) - 0.05, 1.0)
    ax.set_ylabel("holdout balanced accuracy")
    ax.set_title(f"Inferring {att.name} from the features (n={result.holdout_size})", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return save(fig, path, dpi=120)


def write_feature_plots(result: FeatureLeakageResult, out_dir: str | Path) -> list[Path]:
    """Every figure the result supports, into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    written = []
    if result.attribute is not None:
        written.append(plot_attribute_leakage(result, out_dir / "feature_attribute_leakage.png"))
    rec = result.reconstruction
    if rec is not None and rec.samples is not None and len(rec.samples.originals):
        written.append(plot_reconstruction_grid(result, out_dir / "feature_reconstruction_grid.png"))
    return written
