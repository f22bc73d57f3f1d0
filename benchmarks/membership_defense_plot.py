"""Across-seed summary and privacy-utility figure of ``membership_defense_benchmark.py``'s report.

``summarize(report)``: per target and defence setting, the mean over seeds of the best attack's AUC (raw
and through the default purifier), the label floor, the judged accuracy and its drop from the undefended
run, each with a 95 % Student-t interval across seeds. ``plot_defences(report, path)``: per target, best
attack AUC against judged accuracy, every seed a small marker and the mean a large one, raw (open) and
purified (filled) joined by a line; the undefended label floor, the AUC goal and 1 point under the
undefended accuracy are drawn, so the goal region (lower right) shows.

    python benchmarks/membership_defense_plot.py REPORT.json [MORE.json ...] [--out OUT.png]   # redraw, merged
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path

from privacy_frontier import interval  # the benchmarks' one across-seed interval (Student t)

from privsplit.results import read_json


def _setting(row: dict) -> str:
    """The setting a row belongs to across seeds (reports before ``setting`` was written: its options)."""
    return row.get("setting") or row["options"]


def _groups(target: dict) -> dict[str, list[dict]]:
    """A target's rows by setting, in first-seen order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in target["rows"]:
        groups[_setting(r)].append(r)
    return groups


def _mean(values: list[float]) -> dict:
    mean, lo, hi = interval(values)
    return {"mean": mean, "ci95": [lo, hi], "n": len(values)}


def summarize(report: dict) -> list[dict]:
    """One entry per (target, defence setting): means over its seeds with 95 % t-intervals."""
    out = []
    for t in report["targets"]:
        for options, rows in _groups(t).items():
            entry = {
                "target": t["target"],
                "defense": rows[0]["defense"],
                "options": options,
                "seeds": [r["seed"] for r in rows],
                "best_auc": _mean([r["best_auc"] for r in rows]),
                "label_floor": _mean([r["label_floor"] for r in rows]),
                "accuracy": _mean([r["accuracy_judged"] for r in rows]),
                "accuracy_members": _mean([r["accuracy_members"] for r in rows]),
            }
            drops = [r["accuracy_drop_points"] for r in rows if "accuracy_drop_points" in r]
            if drops:
                entry["accuracy_drop_points"] = _mean(drops)
            purified = [r["purified"] for r in rows if "purified" in r]
            if len(purified) == len(rows):
                entry["best_auc_purified"] = _mean([p["best_auc"] for p in purified])
                entry["distortion_pct"] = _mean([p["distortion_pct"] for p in purified])
            nulls = [(r.get("purified") or r).get("null_best_auc") for r in rows]
            if all(n and n[0] is not None for n in nulls):  # the served scores' where purified
                entry["null_best_auc"] = _mean([n[0] for n in nulls])
            eps = [r["privacy"]["epsilon"] for r in rows if r.get("privacy")]
            if eps:
                entry["epsilon"] = max(eps)
            out.append(entry)
    return out


def _fmt(m: dict, digits: int = 3) -> str:
    lo, hi = m["ci95"]
    width = "" if math.isnan(lo) else f" +-{(hi - lo) / 2:.{digits}f}"
    return f"{m['mean']:.{digits}f}{width}"


def summary_table(summary: list[dict]) -> str:
    w = max([7, *(len(e["options"]) for e in summary)])
    head = (
        f"{'target':14} {'defence':{w}} {'seeds':>5} {'best AUC raw':>15} {'+ purifier':>15} "
        f"{'floor':>13} {'null':>13} {'accuracy':>15} {'drop pt':>12} {'members':>6}"
    )
    lines = [head, "-" * len(head)]
    for e in summary:
        pur = _fmt(e["best_auc_purified"]) if "best_auc_purified" in e else "-"
        drop = _fmt(e["accuracy_drop_points"], 2) if "accuracy_drop_points" in e else "-"
        null = _fmt(e["null_best_auc"]) if "null_best_auc" in e else "-"
        lines.append(
            f"{e['target']:14} {e['options']:{w}} {len(e['seeds']):5d} {_fmt(e['best_auc']):>15} {pur:>15} "
            f"{_fmt(e['label_floor']):>13} {null:>13} {_fmt(e['accuracy']):>15} {drop:>12} "
            f"{e['accuracy_members']['mean']:6.3f}"
        )
    lines.append(
        "(means over seeds, +- half the 95% Student-t interval across seeds; null: the best attack's AUC by chance, "
        "membership labels redrawn, on the served scores)"
    )
    return "\n".join(lines)


def plot_defences(report: dict, path: Path) -> Path:
    from privsplit.report._figures import pyplot, save

    plt = pyplot()
    targets = report["targets"]
    fig, axes = plt.subplots(1, len(targets), figsize=(7.0 * len(targets), 5.5), squeeze=False)
    goals = report["goals"]
    for ax, t in zip(axes[0], targets):
        groups = _groups(t)
        colours = plt.get_cmap("tab10")
        for k, (options, rows) in enumerate(groups.items()):
            c = colours(k % 10)
            acc = [100 * r["accuracy_judged"] for r in rows]
            raw = [r["best_auc"] for r in rows]
            ax.scatter(acc, raw, s=14, facecolors="none", edgecolors=[c], lw=0.8)
            mean_acc, mean_raw = sum(acc) / len(acc), sum(raw) / len(raw)
            ax.scatter([mean_acc], [mean_raw], s=70, facecolors="none", edgecolors=[c], lw=1.6, label=options)
            if all("purified" in r for r in rows):
                pur = [r["purified"]["best_auc"] for r in rows]
                ax.scatter(acc, pur, s=14, color=c)
                mean_pur = sum(pur) / len(pur)
                ax.scatter([mean_acc], [mean_pur], s=70, color=c)
                ax.plot([mean_acc, mean_acc], [mean_raw, mean_pur], color=c, lw=0.8, ls="--")
        none = groups.get("none", [])
        if none:
            floor = sum(r["label_floor"] for r in none) / len(none)
            base = 100 * sum(r["accuracy_judged"] for r in none) / len(none)
            ax.axhline(floor, color="grey", ls="--", lw=0.8, label=f"undefended label floor ({floor:.3f})")
            ax.axvline(base - goals["max_drop_points"], color="green", ls=":", lw=0.9, label="1 point under undefended")
        goal = goals["auc"].get(t["target"])
        if goal is not None:
            ax.axhline(goal, color="green", ls="-.", lw=0.9, label=f"AUC goal {goal}")
        ax.axhline(0.5, color="k", ls=":", lw=0.6)
        judged = "10,000 unseen images" if any("accuracy_unseen" in r for r in t["rows"]) else "holdout"
        ax.set_xlabel(f"accuracy % on {judged}")
        ax.set_ylabel("best adaptive attack AUC (open: raw scores, filled: + default purifier)")
        ax.set_title(f"{t['target']}: membership defences, seeds small, means large", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left")
    return save(fig, path)


def merge(reports: list[dict]) -> dict:
    """One report from several (e.g. one process per defence): rows joined per target; a (setting, seed) row
    given twice is kept once, the later file's."""
    merged: dict = {"goals": reports[0]["goals"], "targets": []}
    by_target: dict[str, dict] = {}
    for report in reports:
        for t in report["targets"]:
            entry = by_target.setdefault(t["target"], {**t, "rows": {}})
            for r in t["rows"]:
                entry["rows"][(r["options"], r["seed"])] = r
    for entry in by_target.values():
        merged["targets"].append({**entry, "rows": sorted(entry["rows"].values(), key=lambda r: r["seed"])})
    return merged


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Redraw (and merge) membership_defense_benchmark.py reports.")
    parser.add_argument("reports", nargs="+", type=Path, help="report JSON files (rows of several are merged)")
    parser.add_argument("--out", type=Path, help="figure path (default: the first report's, .png)")
    args = parser.parse_args(argv)
    report = merge([read_json(p) for p in args.reports])
    report["summary"] = summarize(report)
    print(summary_table(report["summary"]))
    print(plot_defences(report, args.out or args.reports[0].with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
