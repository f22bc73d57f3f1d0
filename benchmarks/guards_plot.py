"""Attribute excess and linkage AUC per recipe from `benchmarks/unforeseen_readings.py` results.

Draws docs/assets/guards_celeba_seed1.png from docs/results/data/guards/{base,a1,g13}-seed1/ (CelebA seed 1: the
default, the attribute guard at weight 1, identity 3 + attribute 1; docs/results/unforeseen.md says how they were
made):

    python benchmarks/guards_plot.py
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

root = Path("docs/results/data/guards")
recipes = [
    ("base-seed1", "default (0.904)"),
    ("a1-seed1", "attribute guard 1 (0.9025)"),
    ("g13-seed1", "identity 3 + attribute 1 (0.871)"),
]
rows = {
    k: {r["name"]: r["excess"] for r in json.loads((root / k / "probe_attributes.json").read_text())["rows"]}
    for k, _ in recipes
}
names = sorted(rows["base-seed1"], key=lambda n: -rows["base-seed1"][n])
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 1]})
w = 0.27
x = np.arange(len(names))
for i, (k, label) in enumerate(recipes):
    ax.bar(x + (i - 1) * w, [rows[k][n] for n in names], w, label=label)
ax.axhline(0.05, color="k", ls="--", lw=1, label="goal 0.05")
ax.set_xticks(x, names, rotation=40, ha="right")
ax.set_ylabel("excess = best - max(chance, floor, null)")
ax.set_title("Other attributes, INT8 wire features (one frame)")
ax.legend(fontsize=8)
aucs = [json.loads((root / k / "probe_linkage.json").read_text()) for k, _ in recipes]
best = [max(s["auc"] for s in a["scores"]) for a in aucs]
bx.bar(range(3), best, color=["C0", "C1", "C2"])
bx.axhline(0.53, color="k", ls="--", lw=1)
bx.axhline(0.504, color="grey", ls=":", lw=1)
bx.set_ylim(0.48, 0.6)
bx.set_xticks(range(3), ["default", "attr 1", "id 3 + attr 1"], rotation=20)
bx.set_title("Linkage AUC (goal 0.53, null 0.504)")
fig.suptitle("CelebA 10k seed 1, task accuracy in brackets")
fig.tight_layout()
fig.savefig("docs/assets/guards_celeba_seed1.png", dpi=110)
