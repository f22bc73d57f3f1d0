"""Figures of the quickstart report, drawn from saved results only (never recomputed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privsplit.report._figures import pyplot as _pyplot
from privsplit.report._figures import save as _save
from privsplit.report._figures import show_image
from privsplit.report.layout import QuickstartLayout
from privsplit.results import read_json


def plot_privacy_utility(summary: dict, path: Path) -> Path | None:
    """Task accuracy against what the features leak: the attribute attacker and the reconstruction decoder.

    One point per trained model (joined from least to most protected) plus the exported artefacts."""
    models = [m for m in summary["models"] if m["attribute_balanced_accuracy"] is not None]
    if not models:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    panels = (
        ("attribute_balanced_accuracy", f"best attribute attacker, balanced accuracy ({models[0]['attribute']})"),
        ("reconstruction_ssim", "reconstruction SSIM of the decoder"),
    )
    for ax, (key, label) in zip(axes, panels):
        xs = [m[key] for m in models]
        ys = [m["task_accuracy"] for m in models]
        if None in xs:
            ax.set_visible(False)
            continue
        ax.plot(xs, ys, "-o", color="tab:blue", label="PyTorch models", zorder=3)
        for m, x, y in zip(models, xs, ys):
            ax.annotate(m["name"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        for row in summary["artefacts"]:
            if row["format"] != "pytorch" and row.get(key) is not None:
                ax.scatter([row[key]], [row["task_accuracy"]], marker="s", s=45, color="tab:orange", zorder=4)
                ax.annotate(
                    row["format"],
                    (row[key], row["task_accuracy"]),
                    textcoords="offset points",
                    xytext=(5, -11),
                    fontsize=8,
                    color="tab:orange",
                )
        if key == "attribute_balanced_accuracy":
            ax.axvline(models[0]["attribute_chance"], color="grey", ls=":", label="chance")
            ax.axvline(models[0]["attribute_task_floor"], color="tab:red", ls="--", label="task floor")
        elif models[0]["reconstruction_baseline_ssim"] is not None:
            ax.axvline(models[0]["reconstruction_baseline_ssim"], color="tab:red", ls="--", label="mean-image baseline")
        ax.set_xlabel(label)
        ax.set_title("further left = more private", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("task accuracy (holdout, channel noise on)")
    fig.suptitle("privacy-utility: every attacker trained after the fact on held-out data", fontsize=10)
    return _save(fig, path)


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
