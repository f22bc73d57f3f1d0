"""Quickstart benchmark (issue 6): wall time of every stage and the headline figures, per dataset.

Runs ``privsplit quickstart`` (default settings) into ``benchmarks/results/quickstart-<name>/`` for each
target, or only re-reads a finished one with ``--reuse``, and prints the JSON and a table. Goal: the
whole quickstart on ``digits`` in at most 5 minutes on 2 cores.

    python benchmarks/quickstart_benchmark.py                      # digits (about 2 minutes)
    python benchmarks/quickstart_benchmark.py --targets digits,celeba   # + CelebA 10k (about an hour)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from privsplit.results import read_json, save_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGETS = {
    "digits": dict(data="digits"),
    "celeba": dict(data=f"celeba:{REPO.parent / 'shared' / 'data' / 'celeba-10k'}", curve_weights=()),
}
GOAL_DIGITS_S = 300.0


def run_target(name: str, reuse: bool) -> dict:
    from privsplit.quickstart import QuickstartConfig, run_quickstart
    from privsplit.report.build import build_report

    out = RESULTS / f"quickstart-{name}"
    if not (reuse and (out / "quickstart.json").is_file()):
        run_quickstart(QuickstartConfig(out=out, **TARGETS[name]), force=True)
    build_report(out)
    return read_json(out / "summary.json")


def _f(v, d=3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def table(summaries: dict[str, dict]) -> str:
    lines = []
    for name, s in summaries.items():
        lines.append(
            f"== {name}: total {s['total_seconds']:.0f} s"
            + (f" (goal <= {GOAL_DIGITS_S:.0f} s)" if name == "digits" else "")
        )
        for t in s["stages"]:
            lines.append(f"  {t['seconds']:7.1f} s  {t['name']}")
        lines.append(f"  {'model':<16}{'task acc':>9}{'attr BA':>9}{'floor':>7}{'SSIM':>7}{'base SSIM':>10}")
        for m in s["models"]:
            lines.append(
                f"  {m['name']:<16}{_f(m['task_accuracy']):>9}{_f(m['attribute_balanced_accuracy']):>9}"
                f"{_f(m['attribute_task_floor']):>7}{_f(m['reconstruction_ssim']):>7}{_f(m['reconstruction_baseline_ssim']):>10}"
            )
        for a in s["artefacts"]:
            lines.append(
                f"  {a['format']:<16}{_f(a['task_accuracy']):>9}{_f(a['attribute_balanced_accuracy']):>9}{'':>7}"
                f"{_f(a['reconstruction_ssim']):>7}   size KB {_f(a['size_kb'], 1)}"
            )
        o = s["outputs"]
        if o:
            lines.append(
                f"  MIA best AUC {o['raw']['auc']:.3f} ({o['raw']['attack']}) "
                f"-> {o['purified']['auc']:.3f} purified, label floor "
                f"{o['label_floor']:.3f}; "
                f"TPR@0.1%FPR {o['raw']['tpr_at_0.1pct_fpr']:.3f} -> {o['purified']['tpr_at_0.1pct_fpr']:.3f}; "
                f"inversion MSE {o['inversion_mse']:.4f} -> {o['inversion_mse_purified']:.4f}; "
                f"distortion {o['distortion_pct']:.1f} %"
            )
        for d in s["device_latency"]:
            lines.append(
                f"  device {d['runtime']:<12} p50 {d['p50_ms']:.2f} ms p99 {d['p99_ms']:.2f} ms "
                f"(encode {d['encode_p50_ms']:.3f} ms), "
                f"{d['bytes_per_request']} B/request"
            )
        for p in (s["cloud"] or {}).get("points", []):
            lines.append(
                f"  cloud c={p['concurrency']:<3} {p['throughput']:.0f} req/s, "
                f"p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="digits", help="comma-separated: digits, celeba")
    parser.add_argument(
        "--reuse", action="store_true", help="re-read finished quickstart folders instead of running them again"
    )
    args = parser.parse_args(argv)
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {sorted(TARGETS)}")
    summaries = {name: run_target(name, args.reuse) for name in names}
    report = {"schema_version": 1, "goal_digits_seconds": GOAL_DIGITS_S, "summaries": summaries}
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json(RESULTS / "quickstart_benchmark.json", report)
    print(
        json.dumps(
            {n: {"total_seconds": s["total_seconds"], "stages": s["stages"]} for n, s in summaries.items()}, indent=2
        )
    )
    print(table(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
