"""Privacy-utility benchmark of Privacy Partitioning on CelebA 10k (task Smiling, private Male, 64 px).

Trains the unprotected baseline and several protection settings with `privsplit train`, measures each
with `privsplit probe features` (fresh attackers trained after the fact on `attacker` features and
scored on `holdout`), and writes ``RESULTS/celeba_privacy.json``, a table, and the privacy-utility
curve ``RESULTS/celeba_privacy.png``. Runs jobs in parallel, one thread each.

    python benchmarks/celeba_privacy.py --data ../shared/data/celeba-10k --jobs 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from privsplit.results import dumps, read_json, save_json

SETTINGS: dict[str, list[str]] = {
    "unprotected": ["--unprotected", "--epochs", "15"],
    "bottleneck+noise": ["--adv-weight", "0"],
    "default": [],
    "noise 0.5": ["--noise", "0.5"],
    "noise 1.5": ["--noise", "1.5"],
    "8 channels": ["--feature-channels", "8"],
}
SCHEMA_VERSION = 1


def run_setting(name: str, extra: list[str], args: argparse.Namespace) -> dict:
    run_dir = args.out / "runs" / name.replace(" ", "_").replace("+", "_")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PRIVSPLIT_PROGRESS="0")
    train = [
        sys.executable,
        "-m",
        "privsplit.cli.main",
        "train",
        "--data",
        f"celeba:{args.data}",
        "--task",
        "Smiling",
        "--private",
        "Male",
        "--image-size",
        "64",
        "--out",
        str(run_dir),
        "--seed",
        str(args.seed),
        "--quiet",
        *extra,
    ]
    if args.epochs and "--epochs" not in extra:
        train += ["--epochs", str(args.epochs)]
    t0 = time.perf_counter()
    if not (run_dir / "metrics.json").is_file() or args.retrain:
        subprocess.run(train, check=True, env=env)
    t1 = time.perf_counter()
    probe_json = run_dir / "probe_features.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "privsplit.cli.main",
            "probe",
            "features",
            str(run_dir),
            "--json",
            str(probe_json),
            "--plots",
            str(run_dir / "plots"),
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    probe = read_json(probe_json)
    metrics = read_json(run_dir / "metrics.json")
    print(f"[{name}] done: train {t1 - t0:.0f} s, probe {time.perf_counter() - t1:.0f} s", file=sys.stderr, flush=True)
    return {
        "setting": name,
        "args": extra,
        "task_accuracy": metrics["task"]["accuracy"],
        "attribute_balanced_accuracy": probe["attribute"]["balanced_accuracy"],
        "attribute_best_attacker": probe["attribute"].get("best"),
        "attribute_attackers": {k: v["balanced_accuracy"] for k, v in probe["attribute"]["attackers"].items()},
        "chance": probe["attribute"]["chance"],
        "task_floor": probe["attribute"]["task_floor"],
        "reconstruction_ssim": probe["reconstruction"]["ssim"],
        "baseline_ssim": probe["reconstruction"]["baseline_ssim"],
        "train_seconds": metrics["train_seconds"],
    }


def table(rows: list[dict]) -> str:
    head = f"{'setting':<18} {'task acc':>8} {'attr bacc':>9} {'floor':>6} {'chance':>6} {'SSIM':>6} {'mean-img':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['setting']:<18} {r['task_accuracy']:>8.4f} {r['attribute_balanced_accuracy']:>9.4f} "
            f"{r['task_floor']:>6.3f} {r['chance']:>6.3f} {r['reconstruction_ssim']:>6.3f} {r['baseline_ssim']:>8.3f}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, base_key, label in (
        (axes[0], "attribute_balanced_accuracy", "task_floor", "attacker balanced accuracy (Male)"),
        (axes[1], "reconstruction_ssim", "baseline_ssim", "reconstruction SSIM"),
    ):
        for r in rows:
            ax.scatter(r[key], r["task_accuracy"], s=40)
            ax.annotate(
                r["setting"], (r[key], r["task_accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        ax.axvline(
            rows[0][base_key],
            color="grey",
            ls="--",
            lw=1,
            label="task floor" if base_key == "task_floor" else "mean image",
        )
        if key == "attribute_balanced_accuracy":
            ax.axvline(rows[0]["chance"], color="grey", ls=":", lw=1, label="chance")
        ax.set_xlabel(f"{label}  (lower = more private)")
        ax.set_ylabel("holdout task accuracy (Smiling)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("privsplit on CelebA 10k, 64 px: privacy-utility trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/celeba-10k"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/celeba_privacy"))
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of: " + ", ".join(SETTINGS))
    p.add_argument("--epochs", type=int, default=None, help="override the training epochs of protected settings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--retrain", action="store_true", help="retrain even when a run folder exists")
    args = p.parse_args()
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda n: run_setting(n, SETTINGS[n], args), names))
    result = {
        "schema_version": SCHEMA_VERSION,
        "dataset": "celeba-10k",
        "task": "Smiling",
        "private": "Male",
        "image_size": 64,
        "seed": args.seed,
        "rows": rows,
    }
    save_json(args.out / "celeba_privacy.json", result)
    plot(rows, args.out / "celeba_privacy.png")
    print(dumps(result), end="")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
