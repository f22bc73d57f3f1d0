"""The report's section on what training never named: repeated frames, identity linkage, every other attribute.

Read from the probe results saved in the protected run folder (``privsplit probe features RUN --frames K
--identity --attributes all``, or the quickstart's frames stage), never recomputed. Where the data has no labels
for a question (digits has no identities and no attributes beyond digit and slant), the section says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from privsplit.report.document import Document, Figure, Table
from privsplit.results import read_json

FRAMES_GOAL = 0.01  # averaging K frames may raise an attacker by at most this over one frame (issue 26)
ATTRIBUTE_GOAL = 0.05  # no other attribute more than this over its own floor and null
# RUN/probe_KIND[.ENCODER][.framesK[.jitterS] | .noisefree].json, as the probes name their results (Frames.tag)
_RESULT = re.compile(
    r"^probe_(?P<kind>features|linkage|attributes)(?:\.(?P<enc>[a-z]+-[a-z0-9]+))?"
    r"(?:\.frames(?P<k>\d+)(?:\.jitter(?P<j>[0-9.]+?))?|(?P<nf>\.noisefree))?\.json$"
)
_NO_LABELS = {
    "digits": "digits has no identities and no labels beyond digit and slant",
    "fashion-mnist": "Fashion-MNIST has no identities and no labels beyond its class",
}


def _tag(match: re.Match) -> dict:
    return {
        "source": match["enc"] or "torch",
        "frames": int(match["k"]) if match["k"] else 1,
        "jitter": float(match["j"]) if match["j"] else 0.0,
        "noise_free": bool(match["nf"]),
    }


def _frames_rows(run: Path) -> list[dict]:
    rows = []
    for path in sorted(run.glob("probe_features*.json")):
        match = _RESULT.match(path.name)
        if match is None or match["kind"] != "features":
            continue
        attr = (read_json(path, what="a feature-leakage probe") or {}).get("attribute") or {}
        if attr.get("balanced_accuracy") is None:
            continue
        rows.append(
            {
                **_tag(match),
                "attribute": attr.get("name"),
                "balanced_accuracy": attr["balanced_accuracy"],
                "chance": attr.get("chance"),
                "task_floor": attr.get("task_floor"),
                "null_q95": attr.get("permutation_null_q95"),
                "file": path.name,
            }
        )
    return sorted(rows, key=_order)


def _order(row: dict) -> tuple:
    return row["source"] != "torch", row["source"], row["noise_free"], row["frames"], row["jitter"]


def _other_rows(run: Path, kind: str) -> list[dict]:
    rows = []
    for path in sorted(run.glob(f"probe_{kind}*.json")):
        match = _RESULT.match(path.name)
        if match is None or match["kind"] != kind:
            continue
        data = read_json(path, what=f"a {kind} probe")
        row = {**_tag(match), "file": path.name}
        if kind == "linkage":
            best = max(data["scores"], key=lambda s: s["auc"])
            null = data.get("null_auc")
            row.update(
                best_auc=best["auc"],
                best_attacker=best["attacker"],
                null_auc=null,
                excess=best["auc"] - max(0.5, null if null is not None else 0.5),
                tpr_at_fpr_1pct=max(s["tpr_at_fpr_1pct"] for s in data["scores"]),
                rank1=max(s["rank1"] for s in data["scores"]),
                rank1_chance=data.get("rank1_chance"),
                test_identities=data.get("test_identities"),
            )
        else:
            excess = {r["name"]: r["excess"] for r in data["rows"]}
            worst = max(excess, key=excess.get)
            row.update(
                attributes=len(excess),
                median_excess=data.get("median_excess"),
                worst=worst,
                worst_excess=excess[worst],
                over_goal=sorted((n for n, e in excess.items() if e > ATTRIBUTE_GOAL), key=lambda n: -excess[n]),
            )
        rows.append(row)
    return sorted(rows, key=_order)


def unforeseen_summary(run: Path, data_spec: str, *, noise_keying: str | None = None) -> dict:
    """The section's figures from the probe files in ``run`` (the protected model's run folder)."""
    why = _NO_LABELS.get(str(data_spec).split(":", 1)[0])
    linkage, attributes = _other_rows(run, "linkage"), _other_rows(run, "attributes")
    return {
        "noise_keying": noise_keying,
        "frames": _frames_rows(run),
        "linkage": linkage,
        "attributes": attributes,
        "not_measured": {
            "linkage": None if linkage else (why or "no `privsplit probe features RUN --identity` result"),
            "attributes": None if attributes else (why or "no `privsplit probe features RUN --attributes all` result"),
        },
    }


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _reading(row: dict) -> str:
    if row["noise_free"]:
        return "noise-free (the limit)"
    if row["frames"] == 1:
        return "one frame"
    return f"mean of {row['frames']}" + (f", sensor noise {row['jitter']:g} grey levels" if row["jitter"] else "")


def frames_verdicts(rows: list[dict]) -> list[str]:
    """Per source, what averaging K frames adds over one frame, against the goal of +0.01."""
    out = []
    for source in sorted({r["source"] for r in rows}):
        one = [r for r in rows if r["source"] == source and r["frames"] == 1 and not r["noise_free"]]
        if not one:
            continue
        base = one[0]["balanced_accuracy"]
        for r in rows:
            if r["source"] != source or r["frames"] == 1:
                continue
            raise_ = r["balanced_accuracy"] - base
            verdict = "within" if raise_ <= FRAMES_GOAL else "**over**"
            out.append(
                f"- **{source}**, {_reading(r)}: {_f(r['balanced_accuracy'])} against {_f(base)} for one frame "
                f"({raise_:+.3f}; {verdict} the +{FRAMES_GOAL:g} goal)."
            )
    return out


def add_unforeseen_section(doc: Document, u: dict, figures: dict[str, Path]) -> None:
    sec = doc.section("What training never named: repeated frames, linkage, other attributes")
    keying = u.get("noise_keying")
    if keying == "frame":
        sec.add(
            "The shipped bundle keys its channel noise on a device secret and the frame (`--noise-keying frame`): an "
            "exact repeat of a frame gets the same noise, so averaging repeats gives the operator nothing; frames "
            "that differ by sensor noise get independent noise (the jitter rows measure that case)."
        )
    elif keying == "fresh":
        sec.add(
            "The shipped bundle draws fresh channel noise for every request (`--noise-keying fresh`): an operator "
            "who averages K copies of one frame shrinks the noise by √K."
        )
    rows = u["frames"]
    if rows:
        sec.add(
            Table(
                ["features", "what the attacker reads", "attribute", "best bal. acc.", "chance / floor", "null q95"],
                [
                    [
                        r["source"],
                        _reading(r),
                        str(r["attribute"]),
                        _f(r["balanced_accuracy"]),
                        f"{_f(r['chance'])} / {_f(r['task_floor'])}",
                        _f(r["null_q95"]),
                    ]
                    for r in rows
                ],
                caption="The private-attribute probe on averaged frames (`privsplit probe features RUN --frames K`).",
            )
        )
        sec.add("\n".join(frames_verdicts(rows)) or "Only one-frame readings were found: nothing to compare.")
    else:
        sec.add("Repeated frames: not measured (`privsplit probe features RUN --bundle OUT --frames 16`).")
    if "frames" in figures:
        sec.add(Figure(figures["frames"], "The private attribute's best reading against the number of frames."))
    reason = u["not_measured"]["linkage"]
    if reason:
        sec.add(f"Identity linkage: not measured ({reason}).")
    else:
        sec.add(
            Table(
                ["features", "reading", "best AUC (attacker)", "null", "excess", "TPR@1% FPR", "rank-1 (chance)"],
                [
                    [
                        r["source"],
                        _reading(r),
                        f"{_f(r['best_auc'])} ({r['best_attacker']})",
                        _f(r["null_auc"]),
                        f"{r['excess']:+.3f}",
                        _f(r["tpr_at_fpr_1pct"]),
                        f"{r['rank1']:.2%}" + ("" if r["rank1_chance"] is None else f" ({r['rank1_chance']:.2%})"),
                    ]
                    for r in u["linkage"]
                ],
                caption="Can the operator tell two requests show the same person? Attackers fitted on some people, "
                "scored on others never seen.",
            )
        )
    if "linkage_roc" in figures:
        sec.add(Figure(figures["linkage_roc"], "Linkage ROC (log FPR): each attacker against chance."))
    reason = u["not_measured"]["attributes"]
    if reason:
        sec.add(f"Other attributes: not measured ({reason}).")
    else:
        sec.add(
            Table(
                ["features", "reading", "attributes", "median excess", "worst (excess)", f"over {ATTRIBUTE_GOAL:g}"],
                [
                    [
                        r["source"],
                        _reading(r),
                        str(r["attributes"]),
                        f"{r['median_excess']:+.3f}",
                        f"{r['worst']} ({r['worst_excess']:+.3f})",
                        ", ".join(r["over_goal"]) or "none",
                    ]
                    for r in u["attributes"]
                ],
                caption="Every other label: excess = best - max(chance, its own task floor, null).",
            )
        )
    if "attribute_excess" in figures:
        sec.add(Figure(figures["attribute_excess"], "Each attribute's excess over its floor and null."))


def unforeseen_figures(run: Path, u: dict, plots: Path) -> dict[str, Path]:
    from privsplit.probes.attribute_sweep import AttributeSweepResult
    from privsplit.probes.linkage import LinkageResult
    from privsplit.report.unforeseen_plots import (
        plot_attribute_excess,
        plot_leakage_against_frames,
        plot_linkage_roc,
    )

    found: dict[str, Path] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in u["frames"]:
        if not r["noise_free"] and not r["jitter"]:
            curves.setdefault(r["source"], []).append((r["frames"], r["balanced_accuracy"]))
    if any(len(points) > 1 for points in curves.values()):
        floor = max(max(r["task_floor"] or 0.0, r["chance"] or 0.0) for r in u["frames"])
        found["frames"] = plot_leakage_against_frames(
            {k: v for k, v in curves.items() if len(v) > 1}, plots / "frames.png", baseline=floor
        )
    one_frame = [r for r in u["linkage"] if r["frames"] == 1 and not r["noise_free"]]
    if one_frame:
        results = {r["source"]: LinkageResult.load(run / r["file"]) for r in one_frame}
        found["linkage_roc"] = plot_linkage_roc(results, plots / "linkage_roc.png")
    one_frame = [r for r in u["attributes"] if r["frames"] == 1 and not r["noise_free"]]
    if one_frame:
        results = {r["source"]: AttributeSweepResult.load(run / r["file"]) for r in one_frame}
        found["attribute_excess"] = plot_attribute_excess(results, plots / "attribute_excess.png")
    return found
