"""Figures of the quickstart report, drawn from saved results only (never recomputed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privsplit.report._figures import pyplot as _pyplot
from privsplit.report._figures import save as _save
from privsplit.report._figures import show_image
from privsplit.report.layout import QuickstartLayout
from privsplit.results import read_json

_MODEL_MARKERS = ("o", "^", "D", "v", "P", "X", "*", "h")
_ARTEFACT_MARKERS = ("s", "p", "<", ">", "d", "H")


def _limits(values: list[float], *, pad: float = 0.08) -> tuple[float, float]:
    """Axis limits holding every value (points and reference lines) with a margin on both sides."""
    low, high = min(values), max(values)
    margin = max(high - low, 0.02) * pad + 0.005
    return low - margin, high + margin


def privacy_utility_figure(summary: dict):
    """The privacy-utility figure (or None when no model was probed): task accuracy against the best attribute
    attacker (left) and the reconstruction decoder (right), one marker per model and per exported artefact.

    Every point is named in the legend below the panels, never by a label beside it (points of the same encoder,
    e.g. the PyTorch model and its int8 export, sit on top of each other); the limits hold every point and every
    reference line (chance, task floor, chance level of the best attacker, mean-image baseline)."""
    models = [m for m in summary["models"] if m["attribute_balanced_accuracy"] is not None]
    if not models:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True)
    panels = (
        ("attribute_balanced_accuracy", f"best attribute attacker, balanced accuracy ({models[0]['attribute']})"),
        ("reconstruction_ssim", "reconstruction SSIM of the decoder"),
    )
    artefacts = [r for r in summary["artefacts"] if r["format"] != "pytorch"]
    ys_all = [m["task_accuracy"] for m in models] + [
        r["task_accuracy"] for r in artefacts if r.get("task_accuracy") is not None
    ]
    for ax, (key, label) in zip(axes, panels):
        xs = [m[key] for m in models]
        ys = [m["task_accuracy"] for m in models]
        if None in xs:
            ax.set_visible(False)
            continue
        ax.plot(xs, ys, "-", color="tab:blue", alpha=0.5, zorder=2)
        for i, (m, x, y) in enumerate(zip(models, xs, ys)):
            marker = _MODEL_MARKERS[i % len(_MODEL_MARKERS)]
            ax.scatter([x], [y], marker=marker, s=50, color="tab:blue", zorder=3, label=m["name"])
        lines: list[float] = []
        for j, row in enumerate(r for r in artefacts if r.get(key) is not None and r.get("task_accuracy")):
            marker = _ARTEFACT_MARKERS[j % len(_ARTEFACT_MARKERS)]
            ax.scatter(
                [row[key]],
                [row["task_accuracy"]],
                marker=marker,
                s=60,
                facecolors="none",
                edgecolors="tab:orange",
                linewidths=1.5,
                zorder=4,
                label=f"protected as {row['format']}",
            )
            xs.append(row[key])
        if key == "attribute_balanced_accuracy":
            m0 = models[0]
            ax.axvline(m0["attribute_chance"], color="grey", ls=":", label="chance")
            ax.axvline(m0["attribute_task_floor"], color="tab:red", ls="--", label="task floor")
            lines += [m0["attribute_chance"], m0["attribute_task_floor"]]
            null = next((m.get("attribute_null_q95") for m in models if m.get("attribute_null_q95")), None)
            if null is not None:
                ax.axvline(null, color="tab:green", ls="-.", label="best attacker by chance (95th pct)")
                lines.append(null)
        elif models[0]["reconstruction_baseline_ssim"] is not None:
            ax.axvline(models[0]["reconstruction_baseline_ssim"], color="tab:red", ls="--", label="mean-image baseline")
            lines.append(models[0]["reconstruction_baseline_ssim"])
        ax.set_xlim(*_limits(xs + lines))
        ax.set_ylim(*_limits(ys_all))
        ax.set_xlabel(label)
        ax.set_title("further left = more private", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    axes[0].set_ylabel("task accuracy (holdout, channel noise on)")
    fig.suptitle("privacy-utility: every attacker trained after the fact on held-out data", fontsize=10)
    return fig


def plot_privacy_utility(summary: dict, path: Path) -> Path | None:
    """:func:`privacy_utility_figure` written to ``path`` (None when no model was probed)."""
    fig = privacy_utility_figure(summary)
    return None if fig is None else _save(fig, path)


def plot_reconstructions(layout: QuickstartLayout, summary: dict, path: Path, *, columns: int = 8) -> Path | None:
    """Holdout originals over each model's decoder reconstructions (rows: least to most protected)."""
    rows = []
    for m in summary["models"]:
        npz = layout.root / m["run"] / "probe_features.samples.npz"
        if npz.is_file():
            with np.load(npz, allow_pickle=False) as z:
                if not rows:
                    rows.append(("holdout originals", z["originals"][:columns]))
                rows.append((f"{m['name']} (SSIM {m['reconstruction_ssim']:.2f})", z["reconstructions"][:columns]))
    if not rows:
        return None
    plt = _pyplot()
    n = min(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + 1.6, 1.3 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            show_image(ax, images[c])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("what a decoder trained on the attacker's data rebuilds from the features", fontsize=10)
    return _save(fig, path)


def plot_latency(layout: QuickstartLayout, path: Path) -> Path | None:
    """Histograms of the device path per backend (encode + round trip) and of the cloud round trip per concurrency."""
    device = []
    for file in sorted(layout.measure.glob("edge_bench_*.json")):
        data = read_json(file, what="an edge bench result")
        if data.get("samples_ms"):
            device.append((f"{data['runtime']} ({data['encoder']})", np.asarray(data["samples_ms"])))
    cloud = []
    if layout.cloud_load.is_file():
        for p in read_json(layout.cloud_load, what="a load result")["points"]:
            if p.get("latency_sample_ms"):
                cloud.append((f"concurrency {p['concurrency']}", np.asarray(p["latency_sample_ms"])))
    if not device and not cloud:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, series, title in (
        (axes[0], device, "device: decode + encode + quantize + round trip, per request"),
        (axes[1], cloud, "cloud: client round trip under load"),
    ):
        if not series:
            ax.set_visible(False)
            continue
        top = max(np.percentile(v, 99.5) for _, v in series)
        bins = np.linspace(0, top * 1.05, 50)
        for label, values in series:
            ax.hist(
                np.clip(values, 0, bins[-1]), bins=bins, alpha=0.55, label=f"{label}: p50 {np.median(values):.2f} ms"
            )
        ax.set_xlabel("milliseconds")
        ax.set_ylabel("requests")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)
