"""Figures of the feature-leakage probe, drawn from a saved :class:`FeatureLeakageResult` (never recomputed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
    """Each attacker family's best holdout balanced accuracy as a bar, with chance and the task floor as lines."""
    att = result.attribute
    if att is None:
        raise RunError("the result has no attribute inference (the data has no private attribute)")
    plt = _pyplot()
    # each family's best over its learning curve
    best_of = {f: max(sc.values(), key=lambda s: s.balanced_accuracy) for f, sc in att.curve().items()}
    names = list(best_of)
    values = [best_of[k].balanced_accuracy for k in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 3.2))
    colors = ["tab:red" if best_of[k] is att.best_score else "tab:blue" for k in names]
    bars = ax.bar(names, values, color=colors, width=0.6)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.axhline(att.chance, color="gray", linestyle=":", label=f"chance {att.chance:.3f}")
    ax.axhline(att.task_floor, color="black", linestyle="--", label=f"task floor {att.task_floor:.3f}")
    _null_line(ax, att.null_balanced_accuracy, horizontal=True)
    ax.set_ylim(min(att.chance, min(values)) - 0.05, 1.0)
    ax.set_ylabel("holdout balanced accuracy")
    ax.set_title(f"Inferring {att.name} from the features (n={result.holdout_size})", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return save(fig, path, dpi=120)


def _null_line(ax, null: float | None, *, horizontal: bool) -> None:
    """The probe's null reading (best of the same attackers on features that carry nothing), when measured."""
    if null is None:
        return
    line = ax.axhline if horizontal else ax.axvline
    line(null, color="tab:purple", linestyle="-.", label=f"best attacker by chance {null:.3f}")


def plot_learning_curve(result: FeatureLeakageResult, path: str | Path) -> Path:
    """Each attacker family's holdout balanced accuracy (95% interval) against its training-set size.

    The learning curve of the probe: 25/50/100% of ``attacker``, then ``members + reference + attacker``;
    chance and the task floor (with its interval) as lines, the headline (best of all) marked.
    """
    att = result.attribute
    if att is None:
        raise RunError("the result has no attribute inference (the data has no private attribute)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    best = att.best_score
    for family, scores in att.curve().items():
        items = sorted(scores.values(), key=lambda s: s.train_size or 0)
        xs = [s.train_size or result.attacker_size for s in items]
        ys = [s.balanced_accuracy for s in items]
        err = [
            [y - (s.ci_low if s.ci_low is not None else y) for s, y in zip(items, ys)],
            [(s.ci_high if s.ci_high is not None else y) - y for s, y in zip(items, ys)],
        ]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=family)
    ax.scatter(
        [best.train_size or result.attacker_size],
        [best.balanced_accuracy],
        s=160,
        facecolors="none",
        edgecolors="tab:red",
        zorder=5,
        label=f"best {best.balanced_accuracy:.3f}",
    )
    ax.axhline(att.chance, color="gray", linestyle=":", label=f"chance {att.chance:.3f}")
    ax.axhline(att.task_floor, color="black", linestyle="--", label=f"task floor {att.task_floor:.3f}")
    if att.task_floor_ci is not None:
        ax.axhspan(*att.task_floor_ci, color="black", alpha=0.08)
    _null_line(ax, att.null_balanced_accuracy, horizontal=True)
    ax.set_xscale("log")
    ax.set_xlabel("attacker training images (25/50/100% of attacker, then members+reference+attacker)", fontsize=8)
    ax.set_ylabel("holdout balanced accuracy")
    ax.set_title(f"Learning curve: inferring {att.name} from {result.features_from} features", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return save(fig, path, dpi=120)


@dataclass(frozen=True)
class FrontierPoint:
    """One protection setting on the privacy-utility plane: means with 95% intervals (NaN: no interval)."""

    method: str
    label: str
    task_accuracy: float
    attacker: float
    task_interval: tuple[float, float] = (math.nan, math.nan)
    attacker_interval: tuple[float, float] = (math.nan, math.nan)


def _err(value: float, interval: tuple[float, float]) -> list[list[float]]:
    low, high = interval
    if math.isnan(low) or math.isnan(high):
        return [[0.0], [0.0]]
    return [[value - low], [high - value]]


def plot_frontier(
    points: Sequence[FrontierPoint],
    path: str | Path,
    *,
    floor: float,
    chance: float,
    title: str = "privacy-utility frontier",
    baseline: str = "unprotected",
    null: float | None = None,
) -> Path:
    """Task accuracy against the best attacker: one curve per method (ordered by attacker), the ``baseline``
    method's point(s) as a star, the task floor and chance as vertical lines, and ``null`` (the probe's
    ``--null`` reading, when given) as the best attacker's chance level. Up and left is better."""
    if not points:
        raise RunError("no frontier points to draw")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    methods = list(dict.fromkeys(p.method for p in points))
    for method in methods:
        mine = sorted((p for p in points if p.method == method), key=lambda p: p.attacker)
        is_base = method == baseline
        for p in mine:
            xe, ye = _err(p.attacker, p.attacker_interval), _err(p.task_accuracy, p.task_interval)
            ax.errorbar([p.attacker], [p.task_accuracy], xerr=xe, yerr=ye, fmt="none", ecolor="gray", alpha=0.6)
        ax.plot(
            [p.attacker for p in mine],
            [p.task_accuracy for p in mine],
            marker="*" if is_base else "o",
            markersize=14 if is_base else 6,
            linestyle="none" if is_base else "-",
            label=method,
            zorder=4,
        )
        for p in mine:
            if p.label and p.label != "-":
                ax.annotate(
                    p.label, (p.attacker, p.task_accuracy), textcoords="offset points", xytext=(5, 4), fontsize=7
                )
    ax.axvline(floor, color="black", linestyle="--", label=f"task floor {floor:.3f}")
    ax.axvline(chance, color="gray", linestyle=":", label=f"chance {chance:.3f}")
    _null_line(ax, null, horizontal=False)
    ax.set_xlabel("best post-hoc attacker, holdout balanced accuracy (left = more private)")
    ax.set_ylabel("task accuracy (holdout)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path, dpi=120)


def write_feature_plots(result: FeatureLeakageResult, out_dir: str | Path) -> list[Path]:
    """Every figure the result supports, into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    written = []
    if result.attribute is not None:
        written.append(plot_attribute_leakage(result, out_dir / "feature_attribute_leakage.png"))
        if len({s.train_set for s in result.attribute.attackers.values()}) > 1:
            written.append(plot_learning_curve(result, out_dir / "feature_learning_curve.png"))
    rec = result.reconstruction
    if rec is not None and rec.samples is not None and len(rec.samples.originals):
        written.append(plot_reconstruction_grid(result, out_dir / "feature_reconstruction_grid.png"))
    return written
