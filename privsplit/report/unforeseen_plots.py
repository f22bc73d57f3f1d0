"""Figures of what training never named: linkage ROC, every attribute's excess, leakage against averaged frames.

Drawn from saved results (:class:`LinkageResult`, :class:`AttributeSweepResult`), never recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from privsplit.errors import RunError
from privsplit.report._figures import pyplot as _pyplot
from privsplit.report._figures import save

if TYPE_CHECKING:  # pragma: no cover
    from privsplit.probes.attribute_sweep import AttributeSweepResult
    from privsplit.probes.linkage import LinkageResult


def plot_linkage_roc(results: Mapping[str, LinkageResult], path: str | Path) -> Path:
    """Verification ROC of every attacker of each labelled result (e.g. unprotected, protected), log-scaled FPR so
    the 1% and 0.1% operating points show, with the diagonal (chance)."""
    if not results:
        raise RunError("no linkage result to plot: run `privsplit probe features RUN --identity` first")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    styles = ("-", "--", ":", "-.")
    for n, (label, result) in enumerate(results.items()):
        for score in result.scores:
            if not score.roc_fpr:
                continue
            ax.plot(
                [max(f, 1e-4) for f in score.roc_fpr],
                score.roc_tpr,
                styles[n % len(styles)],
                label=f"{label}: {score.attacker} AUC {score.auc:.3f}",
            )
    grid = [1e-4 * (10 ** (k / 20)) for k in range(81)]
    ax.plot(grid, grid, color="grey", lw=0.8, label="chance")
    for fpr in (0.001, 0.01):
        ax.axvline(fpr, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("false positive rate (different people called the same)")
    ax.set_ylabel("true positive rate (same person linked)")
    first = next(iter(results.values()))
    ax.set_title(f"Identity linkage, {first.test_identities} unseen people", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path, dpi=120)


def plot_attribute_excess(
    results: Mapping[str, AttributeSweepResult], path: str | Path, *, limit: float = 0.05
) -> Path:
    """Each attribute's excess over max(chance, its floor, null), one bar per labelled result side by side, sorted
    by the first result's excess; the goal line at ``limit``."""
    if not results:
        raise RunError("no attribute sweep to plot: run `privsplit probe features RUN --attributes all` first")
    plt = _pyplot()
    labels = list(results)
    order = [r.name for r in sorted(results[labels[0]].rows, key=lambda r: -r.excess)]
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(order) + 2), 4.2))
    for k, label in enumerate(labels):
        by_name = {r.name: r.excess for r in results[label].rows}
        xs = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(order))]
        ax.bar(xs, [by_name.get(name, float("nan")) for name in order], width=width, label=label)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.axhline(limit, color="tab:red", lw=0.8, ls="--", label=f"goal: excess <= {limit:g}")
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=75, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel("best - max(chance, task floor, null)")
    ax.set_title("What the features give away about attributes training never named", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path, dpi=120)


def plot_leakage_against_frames(
    curves: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, *, baseline: float | None = None
) -> Path:
    """Leakage readings against the number K of averaged frames (log2 axis), one line per quantity, with the
    one-frame reading + 0.01 (the goal) per line and an optional baseline (floor or null)."""
    if not curves:
        raise RunError("no frames curve to plot: run the probe with --frames K for several K")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for label, points in curves.items():
        points = sorted(points)
        ks, values = [k for k, _ in points], [v for _, v in points]
        line = ax.plot(ks, values, "o-", label=label)[0]
        if ks and ks[0] == 1:
            ax.axhline(values[0] + 0.01, color=line.get_color(), lw=0.6, ls=":")
    if baseline is not None:
        ax.axhline(baseline, color="grey", lw=0.8, ls="--", label=f"baseline {baseline:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("frames averaged (K)")
    ax.set_ylabel("attacker reading")
    ax.set_title("Leakage from the mean of K noisy frames (dotted: one frame + 0.01)", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path, dpi=120)
