"""How each run trained, drawn from its ``metrics.json`` history (never recomputed).

Left: reference accuracy per epoch of every run (the head fine-tune epochs after the dotted line). Right, for runs
trained under a leakage budget: what the controller's fresh attackers read on ``reference`` each adversarial epoch,
against its aim (the task floor, or chance) and aim + budget, with the adversaries' weight it set (log scale).
"""

from __future__ import annotations

from pathlib import Path

from privsplit.report._figures import pyplot as _pyplot
from privsplit.report._figures import save as _save
from privsplit.results import read_json


def _history(root: Path, run: str) -> tuple[list[dict], float | None] | None:
    metrics, config = root / run / "metrics.json", root / run / "config.json"
    if not metrics.is_file():
        return None
    history = read_json(metrics, what="run metrics").get("history") or []
    budget = None
    if config.is_file():
        budget = (read_json(config, what="the run's config").get("train") or {}).get("leakage_budget")
    return (history, budget) if history else None


def plot_training(root: Path, summary: dict, path: Path) -> Path | None:
    """Training curves of the summary's runs; the controller panel only where a run has its readings."""
    runs = {m["name"]: h for m in summary["models"] if (h := _history(root, m["run"])) is not None}
    if not runs:
        return None
    controlled = {name: h for name, h in runs.items() if any(e.get("reference_leakage") is not None for e in h[0])}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if controlled else 1, figsize=(11 if controlled else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    for name, (history, _) in runs.items():
        ax.plot([e["epoch"] for e in history], [e["reference_accuracy"] for e in history], "-o", ms=3, label=name)
        head = [e["epoch"] for e in history if e.get("phase") == "head"]
        if head:
            ax.axvline(min(head) - 0.5, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("epoch (head fine-tune after the dotted line)")
    ax.set_ylabel("task accuracy on reference")
    ax.set_title("task accuracy while training", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if controlled:
        ax = axes[0][1]
        weight_ax = ax.twinx()
        for i, (name, (history, budget)) in enumerate(controlled.items()):
            read = [e for e in history if e.get("reference_leakage") is not None]
            epochs = [e["epoch"] for e in read]
            color = f"C{i}"
            ax.plot(epochs, [e["reference_leakage"] for e in read], "-o", ms=3, color=color, label=f"{name}: reading")
            aim = read[-1]["leakage_floor"]
            ax.axhline(aim, color="tab:red", ls="--", lw=1, label="aim (task floor or chance)" if i == 0 else None)
            if budget:
                ax.axhline(
                    aim + budget, color="tab:red", ls=":", lw=1, label="aim + leakage budget" if i == 0 else None
                )
            weight_ax.step(
                epochs,
                [e["adversary_weight"] for e in read],
                where="post",
                color=color,
                alpha=0.45,
                label=f"{name}: weight",
            )
        weight_ax.set_yscale("log", base=2)
        weight_ax.set_ylabel("adversaries' weight (set after each reading)")
        ax.set_xlabel("adversarial epoch")
        ax.set_ylabel("fresh attacker on reference, balanced accuracy")
        ax.set_title("leakage-budget controller", fontsize=9)
        ax.grid(alpha=0.3)
        lines, labels = ax.get_legend_handles_labels()
        more, more_labels = weight_ax.get_legend_handles_labels()
        ax.legend(lines + more, labels + more_labels, fontsize=7, loc="upper right")
    return _save(fig, path)
