"""Purifier benchmark (issue 7): output leakage without and with the purifier, adaptive attacker.

Targets (unprotected, trained with ``privsplit train``'s recipe, seed 0):

* ``fashion-mnist``: the first 1,250 images (``--limit 1250``: 500 members), 80 epochs;
* ``digits``: all 1,797 images, 80 epochs.

For each target the service's scores and the attacker's shadow model are computed once; then every
purifier is trained on ``reference`` only and probed: the default (``ae``, calibrated privacy-first),
``adversarial``, and a sweep of fixed clamps that traces the leakage/distortion frontier; beside them
the limits of any label-preserving purifier on the target (:mod:`privsplit.probes.purifier_bounds`:
the inversion ceiling and the oracle collapse frontier). Printed: a table and the JSON; written:
``benchmarks/results/purifier_benchmark.json`` (+ per-probe JSON/npz) and ``purifier_frontier.png``.
Runs are cached under ``benchmarks/results/runs/`` (git-ignored); ``--retrain`` rebuilds them.

Goals (issue 7, default purifier): best attack AUC <= label floor + 0.02, accuracy drop <= 0.3
points, label agreement >= 99.7 %, distortion <= 5.5 % (L1 on holdout, see the probe's docstring),
inversion MSE >= 2x the unpurified one.

    python benchmarks/purifier_benchmark.py [--targets fashion-mnist,digits] [--sweep 0.5,1,2,4]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from privsplit.results import dumps, save_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGETS = {
    "fashion-mnist": dict(spec="fashion-mnist", limit=1250, epochs=80),
    "digits": dict(spec="digits", limit=None, epochs=80),
}
GOALS = dict(excess_auc=0.02, accuracy_drop_points=0.3, label_agreement=0.997, distortion_pct=5.5, inversion_ratio=2.0)


def ensure_run(name: str, runs_dir: Path, retrain: bool):
    from privsplit.run import RunFolder
    from privsplit.train import TrainConfig, train_run

    t = TARGETS[name]
    out = runs_dir / name
    if retrain or not RunFolder(out).has("metrics.json"):
        train_run(
            t["spec"], out, limit=t["limit"], seed=0, config=TrainConfig.unprotected(epochs=t["epochs"]), progress=True
        )
    return RunFolder(out)


def row(result, *, label: str, seconds: float) -> dict:
    mia, pur = result.mia, result.mia_purified
    return {
        "purifier": label,
        "log_clamp": result.purifier["config"]["log_clamp"],
        "label_floor": mia.label_floor,
        "best_auc": mia.best.auc,
        "best_attack": mia.best_attack,
        "best_auc_purified": pur.best.auc,
        "best_attack_purified": pur.best_attack,
        "excess_auc": mia.excess_auc,
        "excess_auc_purified": pur.excess_auc,
        "advantage": mia.best.advantage,
        "advantage_purified": pur.best.advantage,
        "tpr_at_0.1pct_fpr": mia.best.tpr_at_01pct_fpr,
        "tpr_at_0.1pct_fpr_purified": pur.best.tpr_at_01pct_fpr,
        "attacks": {
            k: {
                "auc": v.auc,
                "auc_purified": pur.attacks[k].auc,
                "advantage": v.advantage,
                "advantage_purified": pur.attacks[k].advantage,
                "tpr_at_0.1pct_fpr": v.tpr_at_01pct_fpr,
                "tpr_at_0.1pct_fpr_purified": pur.attacks[k].tpr_at_01pct_fpr,
            }
            for k, v in mia.attacks.items()
        },
        "accuracy": result.accuracy,
        "accuracy_members": result.accuracy_members,
        "accuracy_drop_points": result.accuracy_drop_points,
        "label_agreement": result.label_agreement,
        "distortion_pct": result.distortion_pct,
        "distortion_pct_members": result.distortion_pct_members,
        "inversion_mse": result.inversion.mse,
        "inversion_mse_purified": result.inversion_purified.mse,
        "inversion_mse_ratio": result.inversion_mse_ratio,
        "inversion_class_mean_mse": result.inversion.class_mean_mse,
        "inversion_ssim": result.inversion.ssim,
        "inversion_ssim_purified": result.inversion_purified.ssim,
        "n_members": result.n_members,
        "seconds": round(seconds, 1),
        "goals": {
            "excess_auc": pur.excess_auc <= GOALS["excess_auc"],
            "accuracy_drop": result.accuracy_drop_points <= GOALS["accuracy_drop_points"],
            "label_agreement": result.label_agreement >= GOALS["label_agreement"],
            "distortion": result.distortion_pct <= GOALS["distortion_pct"],
            "inversion_ratio": result.inversion_mse_ratio >= GOALS["inversion_ratio"],
        },
    }


def bench_target(name: str, args) -> dict:
    from privsplit.models.purifier import load_purifier, purifier_training_facts
    from privsplit.probes.output_probe import OutputProbeSpec, observe, probe_outputs
    from privsplit.probes.purifier_bounds import purifier_bounds
    from privsplit.train.purifier import PurifierMode, PurifierTrainConfig, train_purifier

    run = ensure_run(name, args.runs, args.retrain)
    spec = OutputProbeSpec(seed=0, progress=False)
    t0 = time.perf_counter()
    view = observe(run, spec)
    print(f"[{name}] scores + shadow model: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    configs = [
        ("ae (default)", PurifierTrainConfig(mode=PurifierMode.AE)),
        ("adversarial", PurifierTrainConfig(mode=PurifierMode.ADVERSARIAL)),
    ]
    configs += [(f"ae clamp {c:g}", PurifierTrainConfig(mode=PurifierMode.AE, log_clamp=c)) for c in args.sweep]
    rows = []
    out_dir = RESULTS / "purifier_probes" / name
    for label, config in configs:
        t = time.perf_counter()
        train_purifier(run, config, progress=False)
        purifier = load_purifier(run)
        result = probe_outputs(run, spec, purifier=purifier, view=view)
        result = replace(
            result, purifier={"config": purifier.config.to_json(), "training": purifier_training_facts(run)}
        )
        result.save(out_dir / f"{label.replace(' ', '_').replace('(', '').replace(')', '')}.json")
        rows.append(row(result, label=label, seconds=time.perf_counter() - t))
        r = rows[-1]
        print(
            f"[{name}] {label}: best AUC {r['best_auc']:.3f} -> {r['best_auc_purified']:.3f} "
            f"(floor {r['label_floor']:.3f}), "
            f"distortion {r['distortion_pct']:.2f}%, {r['seconds']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    # leave the default purifier in the run folder
    train_purifier(run, configs[0][1], progress=False)
    bounds = purifier_bounds(
        view, raw_inversion_mse=rows[0]["inversion_mse"], class_mean_mse=rows[0]["inversion_class_mean_mse"]
    )
    return {
        "target": name,
        **TARGETS[name],
        "run": str(run.path.relative_to(REPO)) if run.path.is_relative_to(REPO) else str(run.path),
        "rows": rows,
        "bounds": {
            **bounds.to_json(),
            "min_distortion_for_goal_excess": bounds.min_distortion_for(GOALS["excess_auc"]),
            "excess_at_goal_distortion": bounds.excess_at(GOALS["distortion_pct"]),
        },
    }


def plot_frontier(report: dict, path: Path) -> Path:
    """Excess AUC over the label floor against distortion: the oracle frontier, the purifiers, the goal box."""
    from privsplit.report._figures import pyplot, save

    plt = pyplot()
    targets = report["targets"]
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.2), squeeze=False)
    for ax, t in zip(axes[0], targets):
        pts = sorted(t["bounds"]["frontier"], key=lambda p: p["distortion_pct"])
        ax.plot(
            [p["distortion_pct"] for p in pts],
            [p["excess_auc"] for p in pts],
            "-",
            color="grey",
            label="oracle collapse frontier (loss attack)",
        )
        for r in t["rows"]:
            ax.scatter(r["distortion_pct"], r["excess_auc_purified"], s=40, zorder=3)
            ax.annotate(
                r["purifier"],
                (r["distortion_pct"], r["excess_auc_purified"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        ax.add_patch(
            plt.Rectangle(
                (0, -0.01),
                GOALS["distortion_pct"],
                GOALS["excess_auc"] + 0.01,
                color="tab:green",
                alpha=0.15,
                label="goal: distortion <= 5.5 %, excess <= 0.02",
            )
        )
        ax.set_xlabel("distortion on non-members (mean L1, %)")
        ax.set_ylabel("best attack AUC - label floor (adaptive attacker)")
        ax.set_title(f"{t['target']} (label floor {t['bounds']['label_floor']:.3f})", fontsize=9)
        ax.set_xlim(0, max(30, max(r["distortion_pct"] for r in t["rows"]) + 2))
        ax.set_ylim(-0.01, 0.35)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    return save(fig, path)


def table(report: dict) -> str:
    head = (
        f"{'target':14} {'purifier':16} {'clamp':>6} {'floor':>6} {'AUC raw':>8} {'AUC pur':>8} {'excess':>7} "
        f"{'TPR.1%':>7} {'acc drop':>8} {'agree':>7} {'dist%':>6} {'dist%m':>6} {'inv x':>6}  goals"
    )
    lines = [head, "-" * len(head)]
    for t in report["targets"]:
        for r in t["rows"]:
            goals = "".join("Y" if ok else "n" for ok in r["goals"].values())
            lines.append(
                f"{t['target']:14} {r['purifier']:16} "
                f"{r['log_clamp']:6.3f} {r['label_floor']:6.3f} {r['best_auc']:8.3f} "
                f"{r['best_auc_purified']:8.3f} "
                f"{r['excess_auc_purified']:+7.3f} {r['tpr_at_0.1pct_fpr_purified']:7.3f} "
                f"{r['accuracy_drop_points']:8.2f} {r['label_agreement']:7.4f} {r['distortion_pct']:6.2f} "
                f"{r['distortion_pct_members']:6.2f} {r['inversion_mse_ratio']:6.2f}  {goals}"
            )
        lines.append("")
        first = t["rows"][0]
        lines.append(f"{t['target']}: every attack's AUC raw -> purified ({first['purifier']}):")
        lines.append(
            "  " + ", ".join(f"{k} {v['auc']:.3f}->{v['auc_purified']:.3f}" for k, v in first["attacks"].items())
        )
        b = t["bounds"]
        need, left = b["min_distortion_for_goal_excess"], b["excess_at_goal_distortion"]
        lines.append(
            f"{t['target']}: limits of any label-preserving purifier: "
            f"inversion MSE ratio <= {b['inversion_ceiling']:.2f} "
            f"(class-mean / raw); oracle frontier: excess <= {GOALS['excess_auc']} needs >= "
            + (f"{need:.1f}" if need is not None else "n/a")
            + f" % distortion; at {GOALS['distortion_pct']} % the least excess is "
            + (f"{left:+.3f}" if left is not None else "n/a")
        )
        lines.append("")
    lines.append(
        "goals: excess<=0.02, acc drop<=0.3 pt, agreement>=0.997, distortion<=5.5% (holdout L1), inversion MSE>=2x"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="fashion-mnist,digits", help="comma-separated: fashion-mnist, digits")
    parser.add_argument(
        "--sweep", default="0.5,1,2,4", help="fixed clamps for the frontier (comma-separated; '' for none)"
    )
    parser.add_argument("--runs", type=Path, default=RESULTS / "runs", help="where the target runs are cached")
    parser.add_argument("--retrain", action="store_true", help="retrain the targets even if cached")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    args.sweep = [float(v) for v in args.sweep.split(",") if v.strip()]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report = {"schema_version": 1, "goals": GOALS, "targets": []}
    for name in [t.strip() for t in args.targets.split(",") if t.strip()]:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}; choose from {sorted(TARGETS)}")
        report["targets"].append(bench_target(name, args))
    report["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json(RESULTS / "purifier_benchmark.json", report)
    plot_frontier(report, RESULTS / "purifier_frontier.png")
    print(dumps(report), end="")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
