"""Training throughput (issue 13): images per second and wall time of one protected run, per way of running it.

For each dataset (digits always; CelebA 10k, Smiling / Male at 64 px, where ``../shared/data/celeba-10k``
exists and ``--targets`` names it) the same protected recipe and seed are trained by ``privsplit train``
as a user runs it: on the CPU in 1 process, on the CPU in 2 processes (torchrun, gloo, one thread
each), and on the accelerator where the machine has one. Each run is then probed by the same
fresh attribute attackers, so the table shows that the ways agree: holdout task accuracy (goal: within
1 point of the 1-process CPU run) and the attacker's balanced accuracy (within its sampling interval,
``1.96 * sqrt(2 * BA (1 - BA) / n_holdout)`` for a difference of two runs). Goal on a GPU: a
protected CelebA-10k run in under 2 minutes.

A 2-process run is not the 1-process run's arithmetic: each rank's BatchNorm sees half of every batch and
the ranks draw their own channel noise, so it lands where another seed of the same recipe lands. With
``--seeds`` every way runs once per seed and the comparison is of the means over seeds (with a 95%
t-interval of each mode), next to the per-seed rows. A finished run (``row.json`` in its folder) is
reused, so an interrupted sweep resumes.

    python benchmarks/train_throughput.py                       # digits
    python benchmarks/train_throughput.py --targets digits --modes cpu-1,cpu-2 --seeds 0,1,2
    python benchmarks/train_throughput.py --targets digits,celeba --modes cpu-1,cpu-2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train-throughput"
CELEBA = REPO.parent / "shared" / "data" / "celeba-10k"
sys.path.insert(0, str(REPO / "benchmarks"))
from privacy_frontier import interval  # noqa: E402  (the across-seeds interval, one definition)

TARGETS = {
    "digits": ["--data", "digits", "--private", "slant"],
    "celeba": ["--data", f"celeba:{CELEBA}", "--task", "Smiling", "--private", "Male", "--image-size", "64"],
}
# mode -> (device, processes)
MODES = {"cpu-1": ("cpu", 1), "cpu-2": ("cpu", 2), "accelerator": ("auto", 1)}
GOAL_GPU_CELEBA_S = 120.0


def accelerator_present() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps is not None and mps.is_available())


def run_folder(target: str, mode: str, seed: int) -> Path:
    return RESULTS / (f"{target}-{mode}" if seed == 0 else f"{target}-{mode}-seed{seed}")


def train(target: str, mode: str, seed: int, extra: list[str]) -> dict:
    device, nproc = MODES[mode]
    out = run_folder(target, mode, seed)
    cmd = [
        sys.executable,
        "-m",
        "privsplit.cli.main",
        "train",
        *TARGETS[target],
        "--out",
        str(out),
        "--device",
        device,
        "--nproc",
        str(nproc),
        "--seed",
        str(seed),
        "--quiet",
        *extra,
    ]
    env = dict(os.environ)
    if nproc == 1 and device == "cpu":
        env.pop("OMP_NUM_THREADS", None)  # the single process uses every core it is given
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{target} {mode}: privsplit train failed: {proc.stderr.strip().splitlines()[-1:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    split = json.loads((out / "split.json").read_text())
    members = len(split["indices"]["members"])
    epochs = len(metrics["history"])
    return {
        "target": target,
        "mode": mode,
        "seed": seed,
        "device": metrics["device"],
        "processes": metrics["processes"],
        "wall_s": round(wall, 2),
        "train_s": metrics["train_seconds"],
        "epochs": epochs,
        "members": members,
        "images_per_s": round(members * epochs / metrics["train_seconds"], 1),
        "task_accuracy": metrics["task"]["accuracy"],
        "holdout": len(split["indices"]["holdout"]),
        "run": str(out),
    }


def probe(row: dict, probe_epochs: int, curve: tuple[float, ...] | None) -> dict:
    from privsplit.probes.feature_probe import FeatureProbeSpec, probe_run_features
    from privsplit.run import RunFolder

    spec = FeatureProbeSpec(seed=0, reconstruction=False).with_epochs(probe_epochs)
    if curve is not None:
        spec = replace(spec, curve=curve)
    result = probe_run_features(RunFolder(row["run"]).check(), spec, progress=False)
    ba = result.attribute.balanced_accuracy
    return {
        **row,
        "attacker_balanced_accuracy": ba,
        "attacker_best": result.attribute.best,
        "attacker_interval": 1.96 * math.sqrt(2 * ba * (1 - ba) / row["holdout"]),
    }


def _mean(values: list[float]) -> dict:
    """Mean over seeds with the half-width of its 95% Student-t interval (None for one seed)."""
    mean, low, high = interval(values)
    half = None if math.isnan(high) else round((high - low) / 2, 4)
    return {"mean": round(mean, 4), "half_width": half, "n": len(values)}


def compare(rows: list[dict]) -> list[dict]:
    """Each mode of a target against its 1-process CPU runs: means over the seeds both ran."""
    summaries = []
    for target in dict.fromkeys(r["target"] for r in rows):
        by_mode: dict[str, dict[int, dict]] = {}
        for r in rows:
            if r["target"] == target:
                by_mode.setdefault(r["mode"], {})[r["seed"]] = r
        ref = by_mode.get("cpu-1")
        for mode, runs in by_mode.items():
            seeds = sorted(runs) if ref is None else sorted(set(runs) & set(ref))
            if not seeds:
                continue
            summary = {
                "target": target,
                "mode": mode,
                "seeds": seeds,
                "train_s": _mean([runs[s]["train_s"] for s in seeds]),
                "images_per_s": _mean([runs[s]["images_per_s"] for s in seeds]),
                "task_accuracy": _mean([runs[s]["task_accuracy"] for s in seeds]),
            }
            probed = all("attacker_balanced_accuracy" in runs[s] for s in seeds)
            if probed:
                summary["attacker_balanced_accuracy"] = _mean([runs[s]["attacker_balanced_accuracy"] for s in seeds])
            if ref is not None and mode != "cpu-1":
                ref_task = _mean([ref[s]["task_accuracy"] for s in seeds])["mean"]
                summary["task_accuracy_delta"] = round(summary["task_accuracy"]["mean"] - ref_task, 4)
                summary["task_within_1_point"] = abs(summary["task_accuracy_delta"]) <= 0.01 + 1e-9
                if probed and all("attacker_balanced_accuracy" in ref[s] for s in seeds):
                    ref_ba = [ref[s]["attacker_balanced_accuracy"] for s in seeds]
                    delta = summary["attacker_balanced_accuracy"]["mean"] - sum(ref_ba) / len(ref_ba)
                    # sampling interval of a difference of two runs' BA, shrunk by the number of seeds averaged
                    interval = sum(ref[s]["attacker_interval"] for s in seeds) / len(seeds) / math.sqrt(len(seeds))
                    summary["attacker_delta"] = round(delta, 4)
                    summary["attacker_interval"] = round(interval, 4)
                    summary["attacker_within_interval"] = abs(delta) <= interval
            summaries.append(summary)
    return summaries


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _pm(v: dict | None) -> str:
    if v is None:
        return "-"
    return f"{v['mean']:.3f}" + (f" +-{v['half_width']:.3f}" if v["half_width"] is not None else "")


def _delta(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def table(rows: list[dict], summaries: list[dict]) -> str:
    lines = [
        f"{'target':<8}{'mode':<13}{'seed':>5}{'device':>16}{'proc':>5}{'train s':>9}{'img/s':>8}"
        f"{'task acc':>9}{'attr BA':>9}{'+-':>7}"
    ]
    for r in rows:
        ba = r.get("attacker_balanced_accuracy")
        lines.append(
            f"{r['target']:<8}{r['mode']:<13}{r['seed']:>5}{r['device'][:15]:>16}{r['processes']:>5}"
            f"{r['train_s']:>9.1f}{r['images_per_s']:>8.0f}{r['task_accuracy']:>9.3f}"
            + (f"{ba:>9.3f}{r['attacker_interval']:>7.3f}" if ba is not None else f"{'-':>9}{'-':>7}")
        )
    lines += [
        "",
        f"{'target':<8}{'mode':<13}{'seeds':<8}{'img/s':>8}{'task acc (mean +-95%)':>24}{'d task':>8}"
        f"{'attr BA (mean)':>16}{'d BA':>8}{'+-':>7}  goals (task / attacker)",
    ]
    for s in summaries:
        goals = ""
        if "task_within_1_point" in s:
            attacker = s.get("attacker_within_interval")
            goals = _yes(s["task_within_1_point"]) + " / " + ("-" if attacker is None else _yes(attacker))
        lines.append(
            f"{s['target']:<8}{s['mode']:<13}{','.join(map(str, s['seeds'])):<8}{s['images_per_s']['mean']:>8.0f}"
            f"{_pm(s.get('task_accuracy')):>24}{_delta(s.get('task_accuracy_delta')):>8}"
            f"{_pm(s.get('attacker_balanced_accuracy')):>16}{_delta(s.get('attacker_delta')):>8}"
            f"{s.get('attacker_interval', float('nan')):>7.3f}  {goals}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="digits", help="comma-separated: digits, celeba (default %(default)s)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated: cpu-1, cpu-2, accelerator (default all)"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="train again even where a finished run is kept")
    parser.add_argument("--epochs", type=int, help="joint epochs (default: the protected recipe's 20)")
    parser.add_argument("--head-epochs", type=int, help="head fine-tune epochs (default: the recipe's 5)")
    parser.add_argument("--limit", type=int, help="use only the first N images of each dataset")
    parser.add_argument(
        "--probe-epochs", type=int, default=30, help="attribute attackers' budget (default %(default)s; 0: no probe)"
    )
    parser.add_argument(
        "--curve",
        help="attackers' learning-curve fractions of the attacker part, e.g. 1 (default: the probe's 0.25,0.5,1;"
        " the pooled set is always added)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    options = (("--epochs", args.epochs), ("--head-epochs", args.head_epochs), ("--limit", args.limit))
    extra = [text for flag, v in options if v is not None for text in (flag, str(v))]
    targets = [t for t in args.targets.split(",") if t]
    if "celeba" in targets and not (CELEBA / "list_attr_celeba.txt").is_file():
        print(f"CelebA 10k not found at {CELEBA}: skipped", file=sys.stderr)
        targets.remove("celeba")
    modes = [m for m in args.modes.split(",") if m and (m != "accelerator" or accelerator_present())]
    curve = tuple(float(f) for f in args.curve.split(",") if f) if args.curve else None
    seeds = [int(x) for x in args.seeds.split(",") if x]
    rows = []
    for target in targets:
        for seed in seeds:
            for mode in modes:
                kept = run_folder(target, mode, seed) / "row.json"
                if kept.is_file() and not args.fresh:
                    row = json.loads(kept.read_text())
                else:
                    row = train(target, mode, seed, extra)
                    if args.probe_epochs > 0:
                        row = probe(row, args.probe_epochs, curve)
                    kept.write_text(json.dumps(row, indent=2) + "\n")
                rows.append(row)
                print(f"{target} {mode} seed {seed}: {json.dumps(row)}", file=sys.stderr, flush=True)
    summaries = compare(rows)
    result = {
        "rows": rows,
        "summaries": summaries,
        "goal_gpu_celeba_s": GOAL_GPU_CELEBA_S,
        "accelerator": accelerator_present(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    print(table(rows, summaries))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
