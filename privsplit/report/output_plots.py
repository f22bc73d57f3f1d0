"""Figures of the output-leakage probe, drawn from a saved :class:`OutputProbeResult`.

Nothing is re-run: the ROC vertices are read off the stored membership scores with scikit-learn's
``roc_curve``; histograms and the inversion grid show stored arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from privsplit.errors import RunError
from privsplit.probes.mia_metrics import roc
from privsplit.report._figures import pyplot as _pyplot
from privsplit.report._figures import save
from privsplit.report._figures import show_image as _show

if TYPE_CHECKING:  # pragma: no cover
    from privsplit.probes.output_results import OutputProbeResult

SETTINGS = (("raw", "without purifier"), ("purified", "with purifier (adaptive attacker)"))


def _arrays(result: OutputProbeResult):
    if result.arrays is None:
        raise RunError(
            "the result holds no arrays (probe_outputs.npz missing beside the JSON): re-run `privsplit probe outputs`"
        )
    return result.arrays


def plot_roc(result: OutputProbeResult, path: str | Path) -> Path:
    """ROC curves of every attack, log-scale FPR, without and with the purifier."""
    arrays = _arrays(result)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    lo = 1.0 / max(1, result.n_nonmembers)
    for ax, (key, title) in zip(axes, SETTINGS):
        report = result.mia if key == "raw" else result.mia_purified
        for name, metrics in report.attacks.items():
            curve = roc(arrays.is_member, arrays.scores[f"{key}/{name}"])
            fpr = np.clip(curve.fpr, lo / 2, 1.0)
            width = 2.2 if name == report.best_attack else 1.0
            ax.plot(fpr, curve.tpr, lw=width, label=f"{name} (AUC {metrics.auc:.3f})")
        grid = np.geomspace(lo / 2, 1, 100)
        ax.plot(grid, grid, "k:", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlim(lo / 2, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate (log)")
        ax.set_title(f"{title}\nlabel floor {report.label_floor:.3f}, best {report.best.auc:.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("true positive rate")
    return save(fig, path)


def plot_score_histograms(result: OutputProbeResult, path: str | Path) -> Path:
    """Members vs non-members: histograms of ``-log10(1 - top probability)`` without and with the purifier."""
    arrays = _arrays(result)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    member = arrays.is_member.astype(bool)
    for ax, (key, title) in zip(axes, SETTINGS):
        top = arrays.top_prob[key].astype(np.float64)
        x = -np.log10(np.clip(1.0 - top, 1e-8, 1.0))
        bins = np.linspace(0, max(1.0, float(x.max())) + 1e-6, 40)
        ax.hist(x[member], bins=bins, alpha=0.6, label="members", color="tab:red")
        ax.hist(x[~member], bins=bins, alpha=0.6, label="non-members", color="tab:blue")
        ax.set_xlabel("-log10(1 - top probability)  (8 = one-hot in float32)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("records")
    return save(fig, path)


def plot_inversion_grid(result: OutputProbeResult, path: str | Path) -> Path:
    """Originals over the decoder's reconstructions from raw and from purified scores (members | non-members)."""
    arrays = _arrays(result)
    plt = _pyplot()
    rows = [
        ("original", arrays.images),
        ("from raw scores", arrays.reconstructions["raw"]),
        ("from purified", arrays.reconstructions["purified"]),
    ]
    n = len(arrays.images)
    half = n // 2
    fig, axes = plt.subplots(len(rows), n, figsize=(0.95 * n, 1.1 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            _show(axes[r, c], images[c])
        axes[r, 0].set_ylabel(label, fontsize=7)
    if half:
        axes[0, 0].set_title("members", fontsize=8, loc="left")
        axes[0, half].set_title("non-members", fontsize=8, loc="left")
    fig.suptitle(
        f"inversion MSE {result.inversion.mse:.4f} raw vs {result.inversion_purified.mse:.4f} purified "
        f"(class-mean floor {result.inversion.class_mean_mse:.4f})",
        fontsize=8,
    )
    return save(fig, path, tight=False)


def write_output_plots(result: OutputProbeResult, out_dir: str | Path) -> list[Path]:
    """``roc.png``, ``score_histograms.png`` and ``inversion_grid.png`` in ``out_dir``."""
    out = Path(out_dir)
    return [
        plot_roc(result, out / "outputs_roc.png"),
        plot_score_histograms(result, out / "outputs_score_histograms.png"),
        plot_inversion_grid(result, out / "outputs_inversion_grid.png"),
    ]
