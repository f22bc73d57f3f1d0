"""Plots of the guards' CelebA readings (`benchmarks/unforeseen_readings.py` results in docs/results/data/guards/).

- ``docs/assets/guards_celeba_seed1.png``: every read attribute's excess and the linkage AUC per recipe, seed 1;
- ``docs/assets/guards_frontier.png``: the measured frontier, task cost (INT8 task accuracy minus the same seed's
  unprotected run's) against linkage AUC and against the worst and mean attribute excess, one point per recipe:
  the mean over its seeds with a 95% t-interval where it has several, the seeds' own points beside.

``docs/results/data/guards/index.json`` names each reading's recipe, seed and task accuracy;
docs/results/unforeseen.md says how they were made::

    python benchmarks/guards_plot.py
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from privacy_frontier import interval  # the benchmarks' one across-seed interval (Student t)

ROOT = Path("docs/results/data/guards")
ASSETS = Path("docs/assets")
SEED1 = [  # reading, legend, short name
    ("base-seed1", "no guard (0.905)", "no guard"),
    ("a1-seed1", "attribute guard 1 (0.903)", "attr 1"),
    ("a3-seed1", "attribute guard 3, unweighted (0.9065)", "attr 3"),
    ("ab3-seed1", "attribute guard 3, balanced: the default (0.908)", "attr 3 bal."),
    ("a1n15-seed1", "attribute guard 1, noise 1.5 (0.8995)", "attr 1, noise 1.5"),
    ("g13-seed1", "identity 3 + attribute 1 (0.871)", "id 3 + attr 1"),
]


def excess(reading: str) -> dict[str, float]:
    rows = json.loads((ROOT / reading / "probe_attributes.json").read_text())["rows"]
    return {r["name"]: r["excess"] for r in rows}


def linkage(reading: str) -> float:
    return max(s["auc"] for s in json.loads((ROOT / reading / "probe_linkage.json").read_text())["scores"])


def save(fig, title: str, name: str, *, bottom: float = 0.0) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    if bottom:  # room for a legend below the panels
        fig.subplots_adjust(bottom=bottom)
    out = ASSETS / name
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def seed1_bars() -> Path:
    rows = {k: excess(k) for k, _, _ in SEED1}
    names = sorted(rows["base-seed1"], key=lambda n: -rows["base-seed1"][n])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [3, 1]})
    w, x = 0.8 / len(SEED1), np.arange(len(names))
    for i, (k, label, _) in enumerate(SEED1):
        ax.bar(x + (i - (len(SEED1) - 1) / 2) * w, [rows[k][n] for n in names], w, label=label)
    ax.axhline(0.05, color="k", ls="--", lw=1, label="goal 0.05")
    ax.set_xticks(x, names, rotation=40, ha="right")
    ax.set_ylabel("excess = best - max(chance, floor, null)")
    ax.set_title("Other attributes, INT8 wire features (one frame)")
    ax.legend(fontsize=8)
    bx.bar(range(len(SEED1)), [linkage(k) for k, _, _ in SEED1], color=[f"C{i}" for i in range(len(SEED1))])
    bx.axhline(0.53, color="k", ls="--", lw=1)
    bx.axhline(0.504, color="grey", ls=":", lw=1)
    bx.set_ylim(0.48, 0.6)
    bx.set_xticks(range(len(SEED1)), [short for _, _, short in SEED1], rotation=30, ha="right")
    bx.set_title("Linkage AUC (goal 0.53, null 0.504)")
    return save(fig, "CelebA 10k seed 1, INT8 task accuracy in brackets", "guards_celeba_seed1.png")


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% t-interval; NaN for one seed), from the benchmarks' one interval."""
    mean, low, high = interval(values)
    return mean, (high - low) / 2


def frontier_rows() -> list[dict]:
    index = json.loads((ROOT / "index.json").read_text())
    by_recipe: dict[str, list[dict]] = defaultdict(list)
    for r in index["readings"]:
        ex = [v for k, v in excess(r["reading"]).items() if k != index["private"]]  # the other attributes
        by_recipe[r["recipe"]].append(
            {
                "seed": r["seed"],
                "cost": 100 * (index["unprotected_int8"][str(r["seed"])] - r["task_int8"]),
                "linkage": linkage(r["reading"]),
                "worst": max(ex),
                "mean": float(np.mean(ex)),
            }
        )
    rows = []
    for recipe, seeds in by_recipe.items():
        row = {"recipe": recipe, "seeds": seeds}
        for key in ("cost", "linkage", "worst", "mean"):
            row[key] = mean_ci([s[key] for s in seeds])
        rows.append(row)
    return rows


def frontier() -> Path:
    rows = frontier_rows()
    panels = [("linkage", "best linkage AUC (goal 0.53)", 0.53), ("worst", "worst attribute excess (goal 0.05)", 0.05)]
    panels.append(("mean", "mean attribute excess", None))
    fig, axes = plt.subplots(1, 3, figsize=(14, 5.2))
    for ax, (key, label, goal) in zip(axes, panels):
        for i, row in enumerate(rows):
            (cx, cxe), (y, ye) = row["cost"], row[key]
            n = len(row["seeds"])
            ax.errorbar(
                cx,
                y,
                xerr=None if math.isnan(cxe) else cxe,
                yerr=None if math.isnan(ye) else ye,
                fmt="o",
                color=f"C{i}",
                capsize=3,
                label=f"{row['recipe']} ({n} seed{'s' * (n > 1)})",
            )
            if n > 1:
                ax.scatter(
                    [s["cost"] for s in row["seeds"]], [s[key] for s in row["seeds"]], s=12, color=f"C{i}", alpha=0.4
                )
        if goal is not None:
            ax.axhline(goal, color="k", ls="--", lw=1)
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.set_xlabel("task cost, points (unprotected - recipe, INT8)")
        ax.set_ylabel(label)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3)
    return save(
        fig,
        "CelebA 10k: the guards' frontier (mean and 95% t-interval over seeds; faint: each seed)",
        "guards_frontier.png",
        bottom=0.25,
    )


def main() -> None:
    for out in (seed1_bars(), frontier()):
        print(out)
    for row in frontier_rows():
        cells = [
            f"{k} {row[k][0]:+.3f}" + ("" if math.isnan(row[k][1]) else f" +- {row[k][1]:.3f}")
            for k in ("cost", "linkage", "worst", "mean")
        ]
        print(f"{row['recipe']} ({len(row['seeds'])} seeds): " + ", ".join(cells))


if __name__ == "__main__":
    main()
