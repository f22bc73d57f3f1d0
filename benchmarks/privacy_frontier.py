"""The privacy-utility frontier: each protection method at several strengths, 3 seeds, on INT8 TFLite features.

For every target, method, strength and seed it runs the real path through the CLI:
``privsplit train`` (the method's flags), ``privsplit export --formats tflite-int8`` and
``privsplit probe features RUN --bundle EXPORT`` (the strongest post-hoc attackers of the probe: four
families on a learning curve up to members+reference+attacker, on the int8 wire features the device
sends, its channel noise included; the task accuracy is the cloud bundle's on those features).
It reports per method and strength: task accuracy, the best attacker's balanced accuracy with the task
floor, reconstruction SSIM with the mean-image SSIM, each as a mean with a 95% t-interval across seeds,
and whether the issue's goals hold on every seed. Writes ``OUT/privacy_frontier.json`` (privsplit.results),
prints the table and draws ``OUT/privacy_frontier_<target>.png`` (task accuracy against attacker, one curve
per method, the unprotected point, floor and chance). ``--null`` adds the probe's null reading: the best of the
same attackers on features that carry nothing, the chance level of a best-of-all headline on that holdout.

Every step is cached in ``OUT/cache/TARGET/METHOD/STRENGTH/seedS`` (a finished step is not re-run), so an
interrupted sweep resumes where it stopped.

    python benchmarks/privacy_frontier.py --targets digits --seeds 0,1,2 --out ../shared/results/frontier
    python benchmarks/privacy_frontier.py --quick            # digits, 1 seed, short training: a smoke run

Methods are a mapping ``name -> {strength: [extra train flags]}`` (``--methods FILE.json`` replaces the
default ones below), so objectives added to ``privsplit train`` later join the sweep by their flags, e.g.
``{"conditional": {"w1": ["--adversary-target", "conditional", "--adv-weight", "1"]}}``. A method named
``unprotected`` is the baseline every goal is measured against. ``benchmarks/methods/guards.json`` sweeps the
identity and attribute guards against the default (CelebA only: digits has no identities)::

    python benchmarks/privacy_frontier.py --targets celeba --unforeseen --methods benchmarks/methods/guards.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from privsplit.results import read_json, save_json

SCHEMA_VERSION = 1
KIND = "privacy_frontier"
UNPROTECTED = "unprotected"

# name -> strength -> extra `privsplit train` flags. "balanced" is the default objective (adversaries aimed at the
# task floor under a leakage budget, warm start + distillation, and the attribute guard where the data has other
# attributes; "no guard" is it without the guard, the default before December 2026); "strong" is
# the earlier default (uniform entropy adversaries at a fixed weight, towards chance); "noise only" is the
# 4-channel bottleneck and channel noise without adversaries.
METHODS: dict[str, dict[str, list[str]]] = {
    UNPROTECTED: {"-": ["--unprotected"]},
    "balanced": {"default": [], "budget 0": ["--leakage-budget", "0"], "no guard": ["--attributes-weight", "0"]},
    "strong": {"w3": ["--privacy", "strong"]},
    "noise only": {"-": ["--adv-weight", "0"]},
}


@dataclass(frozen=True)
class Target:
    name: str
    data: str
    task: str
    private: str
    image_size: int | None
    attacker_slack: float  # goal: best attacker <= (floor or max(chance, floor)) + slack
    against_chance: bool  # digits: max(chance, floor); CelebA: the floor
    ssim_slack: float | None  # goal: SSIM <= mean-image SSIM + slack (None: no SSIM goal)
    identities: bool = False  # --unforeseen: the data has identities (linkage) and other attributes (the sweep)


TARGETS = {
    "digits": Target("digits", "digits", "digit", "slant", None, 0.03, True, None),
    "celeba": Target("celeba", "celeba:../shared/data/celeba-10k", "Smiling", "Male", 64, 0.02, False, 0.05, True),
}


# ---- numbers ----------------------------------------------------------------------------------------------
def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): 95% Student-t interval of the mean across seeds (NaN width for a single seed)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def seed_row(probe: Mapping) -> dict:
    """The figures of one seed, from its probe JSON (``privsplit probe features --bundle``)."""
    att, rec = probe["attribute"], probe["reconstruction"]
    return {
        "task_accuracy": float(probe["task"]["accuracy"]),
        "attacker": float(att["balanced_accuracy"]),
        "attacker_best": str(att["best"]),
        "floor": float(att["task_floor"]),
        "chance": float(att["chance"]),
        "ssim": None if rec is None else float(rec["ssim"]),
        "mean_ssim": None if rec is None else float(rec["baseline_ssim"]),
        "null": att.get("null_balanced_accuracy"),  # the best attacker's chance level (probe --null), or None
        "features_from": probe["data"].get("features_from", "torch"),
    }


UNFORESEEN = (
    "frames16_raise",
    "linkage_auc",
    "linkage_excess",
    "attributes_worst_excess",
    "attributes_median_excess",
    "attributes_over_0_05",
)
FRAMES = 16


def unforeseen_row(run: Path, probe: Mapping) -> dict:
    """``--unforeseen`` figures of one seed from the probe files in ``run``: what averaging 16 frames adds to the
    private-attribute attacker, the linkage AUC and its excess over max(0.5, null), every other attribute's
    worst and median excess and how many exceed 0.05 (None where not measured)."""
    row: dict = dict.fromkeys(UNFORESEEN)
    frames = run / f"probe_features.tflite-int8.frames{FRAMES}.json"
    if frames.is_file():
        many = read_json(frames, what="a feature-leakage result")["attribute"]["balanced_accuracy"]
        row["frames16_raise"] = float(many) - float(probe["attribute"]["balanced_accuracy"])
    linkage = run / "probe_linkage.tflite-int8.json"
    if linkage.is_file():
        data = read_json(linkage, what="a linkage result")
        null = data.get("null_auc")
        row["linkage_auc"] = float(data["best_auc"])
        row["linkage_excess"] = float(data["best_auc"]) - max(0.5, null if null is not None else 0.5)
    sweep = run / "probe_attributes.tflite-int8.json"
    if sweep.is_file():
        excess = [float(r["excess"]) for r in read_json(sweep, what="an attribute sweep")["rows"]]
        row["attributes_worst_excess"] = max(excess)
        row["attributes_median_excess"] = float(sorted(excess)[len(excess) // 2])
        row["attributes_over_0_05"] = sum(e > 0.05 for e in excess)
    return row


def goals(row: Mapping, baseline: Mapping | None, target: Target) -> dict[str, bool | None]:
    """The issue's goals on one seed: task within 1 point of the seed's unprotected run, attacker and SSIM limits."""
    limit = (max(row["chance"], row["floor"]) if target.against_chance else row["floor"]) + target.attacker_slack
    ssim_ok = None
    if target.ssim_slack is not None and row["ssim"] is not None:
        ssim_ok = row["ssim"] <= row["mean_ssim"] + target.ssim_slack
    return {
        "task_within_1pt": None if baseline is None else row["task_accuracy"] >= baseline["task_accuracy"] - 0.01,
        "attacker_within_limit": row["attacker"] <= limit,
        "ssim_within_limit": ssim_ok,
    }


def aggregate(seeds: Mapping[int, Mapping], baselines: Mapping[int, Mapping], target: Target) -> dict:
    """Mean and 95% interval across seeds of every figure, plus each seed's goals and whether all seeds meet them."""
    out: dict = {"seeds": sorted(seeds), "per_seed": {str(s): dict(seeds[s]) for s in sorted(seeds)}}
    for key in ("task_accuracy", "attacker", "floor", "chance", "null", "ssim", "mean_ssim", *UNFORESEEN):
        values = [seeds[s][key] for s in sorted(seeds) if seeds[s].get(key) is not None]
        out[key] = None if not values else dict(zip(("mean", "low", "high"), interval(values)))
    checks = {str(s): goals(seeds[s], baselines.get(s), target) for s in sorted(seeds)}
    out["goals"] = checks
    out["goals_met"] = {
        name: None if any(c[name] is None for c in checks.values()) else all(c[name] for c in checks.values())
        for name in ("task_within_1pt", "attacker_within_limit", "ssim_within_limit")
    }
    return out


def _cell(stat: Mapping | None, fmt: str = ".3f") -> str:
    if stat is None:
        return "n/a"
    if math.isnan(stat["low"]):
        return format(stat["mean"], fmt)
    return f"{stat['mean']:{fmt}} ±{(stat['high'] - stat['low']) / 2:{fmt}}"


def table(rows: Sequence[Mapping]) -> str:
    """Rows ``{target, method, strength, **aggregate(...)}`` as text: mean ± half-width of the 95% interval."""
    head = (
        f"{'target':<7} {'method':<12} {'strength':<13} {'seeds':>5} {'task acc':>14} {'best attacker':>14} "
        f"{'floor':>6} {'chance':>6} {'null':>6} {'SSIM':>14} {'mean-img':>8}  goals (task/attacker/SSIM)"
    )
    lines = [head, "-" * len(head)]
    mark = {True: "yes", False: "NO", None: "-"}
    for r in rows:
        met = r["goals_met"]
        lines.append(
            f"{r['target']:<7} {r['method']:<12} {r['strength']:<13} {len(r['seeds']):>5} "
            f"{_cell(r['task_accuracy']):>14} {_cell(r['attacker']):>14} {r['floor']['mean']:>6.3f} "
            f"{r['chance']['mean']:>6.3f} "
            f"{'n/a' if r.get('null') is None else format(r['null']['mean'], '.3f'):>6} {_cell(r['ssim']):>14} "
            f"{'n/a' if r['mean_ssim'] is None else format(r['mean_ssim']['mean'], '.3f'):>8}  "
            + "/".join(mark[met[k]] for k in ("task_within_1pt", "attacker_within_limit", "ssim_within_limit"))
        )
    extra = [r for r in rows if any(r.get(k) is not None for k in UNFORESEEN)]
    if extra:
        head = (
            f"{'target':<7} {'method':<12} {'strength':<13} {'frames16 raise':>14} {'linkage AUC':>14} "
            f"{'linkage excess':>14} {'worst attr excess':>17} {'median attr':>14} {'attrs > 0.05':>14}"
        )
        lines += ["", head, "-" * len(head)]
        for r in extra:
            lines.append(
                f"{r['target']:<7} {r['method']:<12} {r['strength']:<13} {_cell(r['frames16_raise']):>14} "
                f"{_cell(r['linkage_auc']):>14} {_cell(r['linkage_excess']):>14} "
                f"{_cell(r['attributes_worst_excess']):>17} {_cell(r['attributes_median_excess']):>14} "
                f"{_cell(r['attributes_over_0_05'], '.1f'):>14}"
            )
    return "\n".join(lines)


def frontier_points(rows: Sequence[Mapping], target: str) -> list:
    """The rows of one target as :class:`privsplit.report.feature_plots.FrontierPoint` (means and intervals)."""
    from privsplit.report.feature_plots import FrontierPoint

    points = []
    for r in rows:
        if r["target"] != target:
            continue
        task, att = r["task_accuracy"], r["attacker"]
        points.append(
            FrontierPoint(
                method=r["method"],
                label=r["strength"],
                task_accuracy=task["mean"],
                task_interval=(task["low"], task["high"]),
                attacker=att["mean"],
                attacker_interval=(att["low"], att["high"]),
            )
        )
    return points


# ---- running ------------------------------------------------------------------------------------------------
def _cli(*argv: str, log: Path) -> None:
    env = dict(os.environ, PRIVSPLIT_PROGRESS="0")
    with open(log, "a") as fh:
        fh.write(f"$ privsplit {' '.join(argv)}\n")
        fh.flush()
        done = subprocess.run([sys.executable, "-m", "privsplit.cli.main", *argv], env=env, stdout=fh, stderr=fh)
    if done.returncode != 0:
        raise SystemExit(f"privacy_frontier: `privsplit {' '.join(argv[:2])}` failed, see {log}")


def run_one(
    target: Target, flags: Sequence[str], seed: int, folder: Path, args: argparse.Namespace, *, null: bool = False
) -> dict:
    """Train, export (tflite-int8) and probe one (method, strength, seed); every finished step is kept. ``null``:
    probe with ``--null`` (a cached probe without the null reading is probed again)."""
    run, export, probe = folder / "run", folder / "export", folder / "probe.json"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    t0 = time.perf_counter()
    if not (run / "metrics.json").is_file():
        train = ["train", "--data", target.data, "--task", target.task, "--private", target.private]
        train += ["--out", str(run), "--seed", str(seed), "--quiet", *flags, *args.train_flags.split()]
        size = args.image_size or target.image_size
        if size:
            train += ["--image-size", str(size)]
        if args.epochs and "--epochs" not in flags:
            train += ["--epochs", str(args.epochs)]
        if args.limit:
            train += ["--limit", str(args.limit)]
        _cli(*train, log=log)
    if not (export / "edge" / "manifest.json").is_file():
        # --tolerance 0.99: the benchmark measures every run, it does not gate shipping
        _cli(
            "export",
            str(run),
            "--out",
            str(export),
            "--formats",
            "tflite-int8",
            "--no-probe",
            "--force",
            "--tolerance",
            "0.99",
            "--seed",
            str(seed),
            "--quiet",
            log=log,
        )
    cached = read_json(probe, what="a feature-leakage result") if probe.is_file() else None
    if cached is None or (null and cached["attribute"].get("null_balanced_accuracy") is None):
        cmd = ["probe", "features", str(run), "--bundle", str(export), "--json", str(probe), "--seed", str(seed)]
        if args.probe_epochs:
            cmd += ["--epochs", str(args.probe_epochs)]
        if args.curve:
            cmd += ["--curve", args.curve]
        if null:
            cmd.append("--null")
        _cli(*cmd, log=log)  # --json overwrites a probe cached before --null
        cached = read_json(probe, what="a feature-leakage result")
    row = seed_row(cached)
    if args.unforeseen:
        base = ["probe", "features", str(run), "--bundle", str(export), "--seed", str(seed)]
        if args.probe_epochs:
            base += ["--epochs", str(args.probe_epochs)]
        extra = ["--identity", "--attributes", "all"] if target.identities else []
        if extra and not (run / "probe_linkage.tflite-int8.json").is_file():
            _cli(*base, *extra, log=log)
        if not (run / f"probe_features.tflite-int8.frames{FRAMES}.json").is_file():
            _cli(*base, "--frames", str(FRAMES), log=log)
        row.update(unforeseen_row(run, cached))
    print(
        f"  {folder}: task {row['task_accuracy']:.4f}, attacker {row['attacker']:.3f} "
        f"({time.perf_counter() - t0:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return row


def point_folder(out: Path, target: str, method: str, strength: str, seed: int) -> Path:
    """Where one (target, method, strength, seed) keeps its run, export and probe."""
    slug = strength.replace(" ", "_").replace("(", "").replace(")", "")
    return out / "cache" / target / method / slug / f"seed{seed}"


def sweep(args: argparse.Namespace) -> list[dict]:
    methods = METHODS if args.methods is None else json.loads(Path(args.methods).read_text())
    rows = []
    for name in args.targets:
        target = TARGETS[name]
        baselines = {}
        order = sorted(methods, key=lambda m: m != UNPROTECTED)  # the baseline first
        for method in order:
            for strength, flags in methods[method].items():
                seeds = {}
                for seed in args.seeds:
                    folder = point_folder(args.out, name, method, strength, seed)
                    # the null reading for the protected recipes (the baseline's attacker is far above any null)
                    null = args.null and method != UNPROTECTED
                    seeds[seed] = run_one(target, flags, seed, folder, args, null=null)
                if method == UNPROTECTED:
                    baselines = dict(seeds)
                rows.append(
                    {
                        "target": name,
                        "method": method,
                        "strength": strength,
                        "flags": list(flags),
                        **aggregate(seeds, baselines, target),
                    }
                )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="digits,celeba", help="comma-separated: digits, celeba")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", help="JSON file: {method: {strength: [train flags]}} (default: built in)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/frontier"))
    parser.add_argument("--epochs", type=int, help="training epochs (default: each recipe's own)")
    parser.add_argument("--limit", type=int, help="use only the first N images of each dataset")
    parser.add_argument("--image-size", type=int, help="image size (default: digits 32, CelebA 64)")
    parser.add_argument(
        "--train-flags",
        default="",
        help="extra `privsplit train` flags for every run, e.g. '--head-epochs 2' (quoted, space-separated)",
    )
    parser.add_argument("--probe-epochs", type=int, help="attacker epochs (default: the probe's own)")
    parser.add_argument("--curve", help="probe learning-curve fractions (default: the probe's 0.25,0.5,1)")
    parser.add_argument(
        "--null",
        action="store_true",
        help="probe the protected recipes with --null: beside each best attacker, the best of the same attackers "
        "on noise features (its chance level on the holdout; doubles the attackers' time)",
    )
    parser.add_argument(
        "--unforeseen",
        action="store_true",
        help=f"also probe what training never named: the private attribute from the mean of {FRAMES} frames, and "
        "where the data has them (CelebA) identity linkage and every other attribute; adds their columns, a "
        "linkage ROC and an attribute-excess chart per target",
    )
    parser.add_argument("--quick", action="store_true", help="digits, seed 0, 4 epochs, small probe: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.targets, args.seeds, args.epochs = "digits", "0", args.epochs or 4
        args.image_size = args.image_size or 16
        args.probe_epochs, args.curve = args.probe_epochs or 10, args.curve or "0.5,1"
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}: choose from {', '.join(TARGETS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    rows = sweep(args)
    print(table(rows))
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "limit": args.limit,
        "image_size": args.image_size,
        "train_flags": args.train_flags,
        "probe_epochs": args.probe_epochs,
        "curve": args.curve,
        "null": args.null,
        "unforeseen": args.unforeseen,
        "rows": rows,
    }
    print(f"wrote {save_json(args.out / 'privacy_frontier.json', report)}", file=sys.stderr)
    from privsplit.report.feature_plots import plot_frontier

    for name in args.targets:
        first = next(r for r in rows if r["target"] == name)
        nulls = [r["null"]["mean"] for r in rows if r["target"] == name and r.get("null")]
        path = plot_frontier(
            frontier_points(rows, name),
            args.out / f"privacy_frontier_{name}.png",
            floor=first["floor"]["mean"],
            chance=first["chance"]["mean"],
            title=f"{name}: task accuracy against the best post-hoc attacker (INT8 TFLite features, "
            f"{len(args.seeds)} seeds, 95% intervals)",
            baseline=UNPROTECTED,
            null=sum(nulls) / len(nulls) if nulls else None,
        )
        print(f"wrote {path}", file=sys.stderr)
        if args.unforeseen:
            for path in unforeseen_plots(rows, name, args):
                print(f"wrote {path}", file=sys.stderr)
    return 0


def unforeseen_plots(rows: Sequence[Mapping], name: str, args: argparse.Namespace) -> list[Path]:
    """Seed ``args.seeds[0]``'s linkage ROC and attribute-excess bars, one entry per method and strength."""
    from privsplit.probes.attribute_sweep import AttributeSweepResult
    from privsplit.probes.linkage import LinkageResult
    from privsplit.report.unforeseen_plots import plot_attribute_excess, plot_linkage_roc

    linkage, sweeps = {}, {}
    for r in rows:
        if r["target"] != name:
            continue
        run = point_folder(args.out, name, r["method"], r["strength"], args.seeds[0]) / "run"
        label = r["method"] if r["strength"] == "-" else f"{r['method']} {r['strength']}"
        if (run / "probe_linkage.tflite-int8.json").is_file():
            linkage[label] = LinkageResult.load(run / "probe_linkage.tflite-int8.json")
        if (run / "probe_attributes.tflite-int8.json").is_file():
            sweeps[label] = AttributeSweepResult.load(run / "probe_attributes.tflite-int8.json")
    written = []
    if linkage:
        written.append(plot_linkage_roc(linkage, args.out / f"linkage_roc_{name}.png"))
    if sweeps:
        written.append(plot_attribute_excess(sweeps, args.out / f"attribute_excess_{name}.png"))
    return written


if __name__ == "__main__":
    raise SystemExit(main())
