"""Purifier benchmark (issue 12): membership leakage against cost, every defence, beside the oracle frontier.

Targets (unprotected, trained with ``privsplit train``'s recipe, seed 0):

* ``fashion-mnist``: the first 1,250 images (``--limit 1250``: 500 members), 80 epochs;
* ``digits``: all 1,797 images, 80 epochs.

(``--epochs N`` trains both for N epochs instead, e.g. where the CPUs are shared; the report says so.)

For each target the service's scores, the augmented queries and the attacker's shadow model are
computed once; then every purifier is trained (on ``reference``; ``swap`` also reads one number off
``members``) and probed by the adaptive attackers: the default (``ae``, calibrated privacy-first),
``adversarial``, ``swap`` (label-changing) and a sweep of fixed clamps; beside them the oracle
collapse frontier of :mod:`privsplit.probes.purifier_bounds`. Runs given with ``--defended RUN ...``
(e.g. ``privsplit train --membership-defense``) are probed too, without and with the default purifier,
under the target whose data they use. Every figure carries its 95% sampling interval (AUC:
Hanley-McNeil; accuracies: Wilson; distortion: normal on the per-record L1).

Goals (issue 12, "on the frontier"): at the excess over the label floor that the default purifier
reaches, its mean L1 distortion <= 1.15x the oracle frontier's least distortion for that excess, and
the excess <= 0.02. Inversion: a "xN inversion error" claim only where the raw decoder beats the
class-mean floor by more than 10%.

Written: ``benchmarks/results/purifier_benchmark/<target>.json`` (+ per-probe JSON/npz), and from all
target files present ``benchmarks/results/purifier_benchmark.json`` and ``purifier_frontier.png``.
Runs are cached under ``benchmarks/results/runs/`` (git-ignored); ``--retrain`` rebuilds them.

    python benchmarks/purifier_benchmark.py [--targets fashion-mnist,digits] [--sweep 0.5,1,2,4] [--defended RUN ...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from privsplit.results import dumps, read_json, save_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PER_TARGET = RESULTS / "purifier_benchmark"
TARGETS = {
    "fashion-mnist": dict(spec="fashion-mnist", limit=1250, epochs=80),
    "digits": dict(spec="digits", limit=None, epochs=80),
}
GOALS = dict(excess_auc=0.02, frontier_ratio=1.15, inversion_beats_floor=0.10)


def ensure_run(name: str, runs_dir: Path, retrain: bool, epochs: int):
    from privsplit.run import RunFolder
    from privsplit.train import TrainConfig, train_run

    t = TARGETS[name]
    out = runs_dir / (name if epochs == t["epochs"] else f"{name}-{epochs}ep")
    if retrain or not RunFolder(out).has("metrics.json"):
        config = TrainConfig.unprotected(epochs=epochs)
        train_run(t["spec"], out, limit=t["limit"], seed=0, config=config, progress=True)
    return RunFolder(out)


def _ci(pair) -> list[float]:
    return [round(float(pair[0]), 4), round(float(pair[1]), 4)]


def row(result, view, purifier, *, label: str, kind: str, seconds: float) -> dict:
    from privsplit.models.purifier import purify_numpy
    from privsplit.probes.mia_metrics import mean_interval, proportion_interval

    mia, pur = result.mia, result.mia_purified
    n_hold = len(view.holdout_all)
    l1 = np.abs(view.holdout_all.probs - purify_numpy(purifier, view.holdout_all.probs)).sum(1) * 100.0
    lo = pur.best_label_only
    return {
        "label": label,
        "kind": kind,  # purifier | defended
        "log_clamp": result.purifier["config"]["log_clamp"],
        "label_floor": mia.label_floor,
        "label_floor_purified": pur.label_floor,
        "best_auc": mia.best.auc,
        "best_auc_ci95": _ci(mia.best.auc_ci95),
        "best_attack": mia.best_attack,
        "best_auc_purified": pur.best.auc,
        "best_auc_purified_ci95": _ci(pur.best.auc_ci95),
        "best_attack_purified": pur.best_attack,
        "best_label_only_purified": {"attack": lo, "auc": pur.attacks[lo].auc} if lo else None,
        "excess_auc": mia.excess_auc,
        "excess_auc_purified": pur.excess_auc,
        "tpr_at_1pct_fpr_purified": pur.best.tpr_at_1pct_fpr,
        "tpr_at_0.1pct_fpr_purified": pur.best.tpr_at_01pct_fpr,
        "attacks": {
            k: {
                "auc": v.auc,
                "auc_purified": pur.attacks[k].auc,
                "tpr_at_1pct_fpr": v.tpr_at_1pct_fpr,
                "tpr_at_1pct_fpr_purified": pur.attacks[k].tpr_at_1pct_fpr,
                "tpr_at_0.1pct_fpr": v.tpr_at_01pct_fpr,
                "tpr_at_0.1pct_fpr_purified": pur.attacks[k].tpr_at_01pct_fpr,
            }
            for k, v in mia.attacks.items()
        },
        "accuracy": result.accuracy,
        "accuracy_ci95": _ci(proportion_interval(result.accuracy, n_hold)),
        "accuracy_purified": result.accuracy_purified,
        "accuracy_purified_ci95": _ci(proportion_interval(result.accuracy_purified, n_hold)),
        "accuracy_members": result.accuracy_members,
        "accuracy_members_purified": result.accuracy_members_purified,
        "label_agreement": result.label_agreement,
        "label_agreement_members": result.label_agreement_members,
        "distortion_pct": result.distortion_pct,
        "distortion_pct_ci95": _ci(mean_interval(l1)),
        "distortion_pct_members": result.distortion_pct_members,
        "inversion_mse": result.inversion.mse,
        "inversion_mse_purified": result.inversion_purified.mse,
        "inversion_mse_ratio": result.inversion_mse_ratio,
        "inversion_class_mean_mse": result.inversion.class_mean_mse,
        "n_members": result.n_members,
        "n_nonmembers": result.n_nonmembers,
        "n_holdout": n_hold,
        "seconds": round(seconds, 1),
    }


def _probe(run, spec, view, config, label, kind, out_dir):
    from privsplit.models.purifier import load_purifier, purifier_training_facts
    from privsplit.probes.output_probe import probe_outputs
    from privsplit.train.purifier import train_purifier

    t = time.perf_counter()
    train_purifier(run, config, progress=False)
    purifier = load_purifier(run)
    result = probe_outputs(run, spec, purifier=purifier, view=view)
    result = replace(result, purifier={"config": purifier.config.to_json(), "training": purifier_training_facts(run)})
    result.save(out_dir / f"{label.replace(' ', '_').replace('(', '').replace(')', '')}.json")
    r = row(result, view, purifier, label=label, kind=kind, seconds=time.perf_counter() - t)
    print(
        f"  {label}: best AUC {r['best_auc']:.3f} -> {r['best_auc_purified']:.3f} (floor {r['label_floor']:.3f}), "
        f"acc {r['accuracy']:.3f} -> {r['accuracy_purified']:.3f}, distortion {r['distortion_pct']:.2f}%, "
        f"{r['seconds']:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return r


def _target_of(run) -> str | None:
    spec = run.config().data.spec.split(":")[0]
    return next((name for name, t in TARGETS.items() if t["spec"] == spec), None)


def bench_target(name: str, args) -> dict:
    from privsplit.probes.output_probe import OutputProbeSpec, observe
    from privsplit.probes.purifier_bounds import purifier_bounds
    from privsplit.run import RunFolder
    from privsplit.train.purifier import PurifierMode, PurifierTrainConfig

    run = ensure_run(name, args.runs, args.retrain, args.epochs or TARGETS[name]["epochs"])
    spec = OutputProbeSpec(seed=0, progress=False, shadows=args.shadows)
    t0 = time.perf_counter()
    view = observe(run, spec)
    print(f"[{name}] scores, augmented queries, shadow models: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    configs = [
        ("ae (default)", PurifierTrainConfig(mode=PurifierMode.AE)),
        ("adversarial", PurifierTrainConfig(mode=PurifierMode.ADVERSARIAL)),
    ]
    configs += [(f"swap {s:g}", PurifierTrainConfig(mode=PurifierMode.SWAP, swap_share=s)) for s in args.swap]
    configs += [(f"ae clamp {c:g}", PurifierTrainConfig(mode=PurifierMode.AE, log_clamp=c)) for c in args.sweep]
    out_dir = RESULTS / "purifier_probes" / name
    rows = [_probe(run, spec, view, config, label, "purifier", out_dir) for label, config in configs]
    for path in args.defended:
        src = RunFolder(path).check()
        if _target_of(src) != name:
            continue
        copy = RESULTS / "defended" / src.path.name
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(src.path, copy)
        dview = observe(RunFolder(copy), spec)
        label = f"defended {src.path.name}"
        rows.append(_probe(RunFolder(copy), spec, dview, configs[0][1], label, "defended", out_dir))
    # leave the default purifier in the run folder
    from privsplit.train.purifier import train_purifier

    train_purifier(run, configs[0][1], progress=False)
    default = rows[0]
    inv = dict(raw_inversion_mse=default["inversion_mse"], class_mean_mse=default["inversion_class_mean_mse"])
    bounds = purifier_bounds(view, **inv, dense=True, calibrated=True)  # loss + offline LiRA, as the probe
    loss_only = purifier_bounds(view, **inv, dense=True)  # issue 7's frontier, for reference
    oracle = bounds.least_distortion_for(default["excess_auc_purified"])
    ratio = default["distortion_pct"] / oracle if oracle else None
    beats = 1.0 - default["inversion_mse"] / default["inversion_class_mean_mse"]
    return {
        "target": name,
        **TARGETS[name],
        "epochs": args.epochs or TARGETS[name]["epochs"],
        "run": str(run.path.relative_to(REPO)) if run.path.is_relative_to(REPO) else str(run.path),
        "rows": rows,
        "bounds": {
            **bounds.to_json(),
            "oracle_distortion_at_default_excess": oracle,
            "least_distortion_for_goal_excess": bounds.least_distortion_for(GOALS["excess_auc"]),
            "attacks": "loss and offline LiRA (the larger excess)",
            "loss_only": {
                "frontier": loss_only.to_json()["frontier"],
                "oracle_distortion_at_default_loss_excess": loss_only.least_distortion_for(
                    default["attacks"]["loss"]["auc_purified"] - default["label_floor_purified"]
                ),
            },
        },
        "goals": {
            "default_distortion_over_oracle": ratio,
            "on_the_frontier": ratio is not None and ratio <= GOALS["frontier_ratio"],
            "default_excess_within_goal": default["excess_auc_purified"] <= GOALS["excess_auc"],
            "inversion_raw_beats_class_mean_by": beats,
            "inversion_claim_allowed": beats > GOALS["inversion_beats_floor"],
        },
    }


def plot_frontier(report: dict, path: Path) -> Path:
    """Per target: best adaptive AUC vs holdout accuracy (every defence); AUC excess vs distortion + oracle."""
    from privsplit.report._figures import pyplot, save

    plt = pyplot()
    targets = report["targets"]
    fig, axes = plt.subplots(2, len(targets), figsize=(6.0 * len(targets), 9.0), squeeze=False)
    for col, t in enumerate(targets):
        ax = axes[0][col]
        first = t["rows"][0]
        pts = [("undefended", first["accuracy"], first["accuracy_ci95"], first["best_auc"], first["best_auc_ci95"])]
        for r in t["rows"]:
            if r["kind"] == "defended":
                pts.append((r["label"], r["accuracy"], r["accuracy_ci95"], r["best_auc"], r["best_auc_ci95"]))
            a, ac, b, bc = r["accuracy_purified"], r["accuracy_purified_ci95"], r["best_auc_purified"], None
            bc = r["best_auc_purified_ci95"]
            pts.append((r["label"] + (" + ae" if r["kind"] == "defended" else ""), a, ac, b, bc))
        for label, acc, acc_ci, auc, auc_ci in pts:
            ax.errorbar(
                100 * acc,
                auc,
                xerr=[[100 * (acc - acc_ci[0])], [100 * (acc_ci[1] - acc)]],
                yerr=[[auc - auc_ci[0]], [auc_ci[1] - auc]],
                fmt="o",
                ms=4,
                capsize=2,
                lw=0.8,
            )
            ax.annotate(label, (100 * acc, auc), textcoords="offset points", xytext=(4, 3), fontsize=6)
        ax.axhline(first["label_floor"], color="grey", ls="--", lw=0.8, label="undefended label floor")
        ax.axhline(0.5, color="k", ls=":", lw=0.8)
        ax.set_xlabel("holdout accuracy % (95% interval)")
        ax.set_ylabel("best adaptive attack AUC (95% interval)")
        ax.set_title(f"{t['target']} ({t['epochs']} epochs): what each defence buys and costs", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

        ax = axes[1][col]
        front = sorted(t["bounds"]["frontier"], key=lambda p: p["distortion_pct"])
        ax.plot(
            [p["distortion_pct"] for p in front],
            [p["excess_auc"] for p in front],
            "-",
            color="grey",
            label="oracle collapse frontier (loss + offline LiRA)",
        )
        lf = sorted(t["bounds"]["loss_only"]["frontier"], key=lambda p: p["distortion_pct"])
        ax.plot([p["distortion_pct"] for p in lf], [p["excess_auc"] for p in lf], ":", color="grey", label="loss only")
        for r in t["rows"]:
            if r["kind"] != "purifier":
                continue
            lo, hi = r["distortion_pct_ci95"]
            blo, bhi = r["best_auc_purified_ci95"]
            e = r["excess_auc_purified"]
            ax.errorbar(
                r["distortion_pct"],
                e,
                xerr=[[r["distortion_pct"] - lo], [hi - r["distortion_pct"]]],
                yerr=[[r["best_auc_purified"] - blo], [bhi - r["best_auc_purified"]]],
                fmt="o",
                ms=4,
                capsize=2,
                lw=0.8,
            )
            ax.annotate(r["label"], (r["distortion_pct"], e), textcoords="offset points", xytext=(4, 3), fontsize=6)
        ax.axhline(GOALS["excess_auc"], color="tab:green", ls="--", lw=0.8, label="goal: excess <= 0.02")
        ax.set_xlabel("distortion on holdout (mean L1 %, 95% interval)")
        ax.set_ylabel("best adaptive AUC - label floor (95% interval of the AUC)")
        g = t["goals"]["default_distortion_over_oracle"]
        ax.set_title(
            f"{t['target']}: label floor {t['bounds']['label_floor']:.3f}; default / oracle distortion "
            + (f"{g:.2f}x" if g else "n/a"),
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path)


def table(report: dict) -> str:
    head = (
        f"{'target':14} {'defence':22} {'floor':>6} {'AUC raw':>8} {'AUC pur':>15} {'excess':>7} "
        f"{'TPR1%':>6} {'TPR.1%':>6} {'acc':>13} {'acc mem':>8} {'agree':>7} {'dist%':>14}"
    )
    lines = [head, "-" * len(head)]
    for t in report["targets"]:
        for r in t["rows"]:
            ci, aci, dci = r["best_auc_purified_ci95"], r["accuracy_purified_ci95"], r["distortion_pct_ci95"]
            lines.append(
                f"{t['target']:14} {r['label']:22} {r['label_floor']:6.3f} {r['best_auc']:8.3f} "
                f"{r['best_auc_purified']:.3f} [{ci[0]:.2f},{ci[1]:.2f}] {r['excess_auc_purified']:+7.3f} "
                f"{r['tpr_at_1pct_fpr_purified']:6.3f} {r['tpr_at_0.1pct_fpr_purified']:6.3f} "
                f"{r['accuracy_purified']:.3f}[{aci[0]:.2f},{aci[1]:.2f}] {r['accuracy_members_purified']:8.3f} "
                f"{r['label_agreement']:7.4f} {r['distortion_pct']:5.2f}[{dci[0]:.1f},{dci[1]:.1f}]"
            )
        first = t["rows"][0]
        lines.append(f"{t['target']}: every attack's AUC raw -> purified ({first['label']}):")
        aucs = (f"{k} {v['auc']:.3f}->{v['auc_purified']:.3f}" for k, v in first["attacks"].items())
        lines.append("  " + ", ".join(aucs))
        g, b = t["goals"], t["bounds"]
        oracle = b["oracle_distortion_at_default_excess"]
        lines.append(
            f"{t['target']}: on the frontier? default excess {first['excess_auc_purified']:+.3f} at "
            f"{first['distortion_pct']:.2f}% vs oracle "
            + (f"{oracle:.2f}%" if oracle is not None else "n/a")
            + (f" = {g['default_distortion_over_oracle']:.2f}x" if g["default_distortion_over_oracle"] else "")
            + f" (goal <= {GOALS['frontier_ratio']}x and excess <= {GOALS['excess_auc']}): "
            + ("MET" if g["on_the_frontier"] and g["default_excess_within_goal"] else "MISSED")
        )
        lines.append(
            f"{t['target']}: raw inversion beats the class-mean floor by "
            f"{100 * g['inversion_raw_beats_class_mean_by']:.1f}%"
            + (" (> 10%: a xN claim is allowed)" if g["inversion_claim_allowed"] else " (<= 10%: no xN claim)")
        )
        lines.append("")
    return "\n".join(lines)


def write_report(targets: list[str] | None = None) -> dict:
    names = targets or [n for n in TARGETS if (PER_TARGET / f"{n}.json").is_file()]
    report = {
        "schema_version": 2,
        "goals": GOALS,
        "targets": [read_json(PER_TARGET / f"{n}.json", what="a purifier benchmark target") for n in names],
    }
    save_json(RESULTS / "purifier_benchmark.json", report)
    plot_frontier(report, RESULTS / "purifier_frontier.png")
    return report


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="fashion-mnist,digits", help="comma-separated: fashion-mnist, digits")
    parser.add_argument("--sweep", default="0.5,1,2,4", help="fixed clamps for the frontier ('' for none)")
    parser.add_argument("--swap", default="0.05", help="swap purifiers' shares of non-members ('' for none)")
    parser.add_argument("--defended", nargs="*", default=[], type=Path, metavar="RUN", help="defended runs to add")
    parser.add_argument("--epochs", type=int, default=None, help="train the targets for N epochs instead of 80")
    parser.add_argument("--shadows", type=int, default=1, help="shadow models of the attacker (default 1)")
    parser.add_argument("--runs", type=Path, default=RESULTS / "runs", help="where the target runs are cached")
    parser.add_argument("--retrain", action="store_true", help="retrain the targets even if cached")
    parser.add_argument("--report-only", action="store_true", help="only merge the target files into plot + table")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        args.sweep, args.swap = _floats(args.sweep), _floats(args.swap)
    except ValueError:
        parser.error("--sweep and --swap take comma-separated numbers, e.g. --sweep 0.5,1,2")
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    for name in names:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}; choose from {sorted(TARGETS)}")
    if not args.report_only:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        for name in names:
            started = time.perf_counter()
            result = bench_target(name, args)
            result["seconds"] = round(time.perf_counter() - started, 1)
            save_json(PER_TARGET / f"{name}.json", result)
    report = write_report()
    print(dumps(report), end="")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
