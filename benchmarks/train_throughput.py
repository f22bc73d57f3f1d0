"""Training throughput (issue 13): images per second and wall time of one protected run, per way of running it.

For each dataset (digits always; CelebA 10k, Smiling / Male at 64 px, where ``../shared/data/celeba-10k``
exists and ``--targets`` names it) the same protected recipe and seed are trained by ``privsplit train``
as a user runs it: on the CPU in 1 process, on the CPU in 2 processes (torchrun, gloo, one thread
each), and on the accelerator where the machine has one. Each run is then probed by the same
fresh attribute attackers, so the table shows that the ways agree: holdout task accuracy (goal: within
1 point of the 1-process CPU run) and the attacker's balanced accuracy (within its sampling interval,
``1.96 * sqrt(2 * BA (1 - BA) / n_holdout)`` for a difference of two runs). Goal on a GPU: a
protected CelebA-10k run in under 2 minutes.

    python benchmarks/train_throughput.py                       # digits
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


def train(target: str, mode: str, extra: list[str]) -> dict:
    device, nproc = MODES[mode]
    out = RESULTS / f"{target}-{mode}"
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


def compare(rows: list[dict]) -> list[dict]:
    """Each run against the 1-process CPU run of its target."""
    refs = {r["target"]: r for r in rows if r["mode"] == "cpu-1"}
    for r in rows:
        ref = refs.get(r["target"])
        if ref is None or r is ref:
            continue
        r["task_accuracy_delta"] = round(r["task_accuracy"] - ref["task_accuracy"], 4)
        r["task_within_1_point"] = abs(r["task_accuracy_delta"]) <= 0.01 + 1e-9
        if "attacker_balanced_accuracy" in r:
            r["attacker_delta"] = round(r["attacker_balanced_accuracy"] - ref["attacker_balanced_accuracy"], 4)
            r["attacker_within_interval"] = abs(r["attacker_delta"]) <= ref["attacker_interval"]
    return rows


def table(rows: list[dict]) -> str:
    def f(r: dict, k: str) -> str:
        if r.get(k) is None:
            return "-"
        return f"{r[k]:+.3f}" if k.endswith("delta") else f"{r[k]:.3f}"

    lines = [
        f"{'target':<8}{'mode':<13}{'device':<20}{'proc':>5}{'train s':>9}{'img/s':>8}"
        f"{'task acc':>9}{'d task':>8}{'attr BA':>9}{'d BA':>8}{'+-':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['target']:<8}{r['mode']:<13}{r['device']:<20}{r['processes']:>5}{r['train_s']:>9.1f}"
            f"{r['images_per_s']:>8.0f}{f(r, 'task_accuracy'):>9}{f(r, 'task_accuracy_delta'):>8}"
            f"{f(r, 'attacker_balanced_accuracy'):>9}{f(r, 'attacker_delta'):>8}"
            f"{f(r, 'attacker_interval'):>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="digits", help="comma-separated: digits, celeba (default %(default)s)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated: cpu-1, cpu-2, accelerator (default all)"
    )
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
    rows = []
    for target in targets:
        for mode in modes:
            row = train(target, mode, extra)
            if args.probe_epochs > 0:
                row = probe(row, args.probe_epochs, curve)
            rows.append(row)
            print(f"{target} {mode}: {json.dumps(row)}", file=sys.stderr, flush=True)
    rows = compare(rows)
    result = {"rows": rows, "goal_gpu_celeba_s": GOAL_GPU_CELEBA_S, "accelerator": accelerator_present()}
    text = json.dumps(result, indent=2)
    print(text)
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
