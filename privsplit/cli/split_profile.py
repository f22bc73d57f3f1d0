"""``privsplit split-profile RUN``: latency, bytes and a leakage indicator per candidate split; a suggestion."""

from __future__ import annotations

import argparse
from pathlib import Path

from privsplit.cli._common import add_json_out, non_negative_float, non_negative_int, positive_int, seed_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "split-profile",
        help="per candidate split: device latency, bytes on the wire, leakage indicator; suggest a split",
        description="Neurosurgeon-style split-point profile of a run's architecture: for each candidate split, the "
        "latency of the encoder prefix (onnxruntime on an exported prefix, or torch eager), of the server layers "
        "after it, the bytes of the int8 request, the uplink time at --bandwidth-mbps, and a cheap leakage "
        "indicator (dCor², the bias-corrected squared distance correlation between input and the trained network's "
        "activation at that cut; with a "
        "private attribute, a logistic-regression probe's balanced accuracy). Suggests the split with the lowest "
        "leakage indicator within --budget-ms (or the fastest without a budget). Latency is measured on this machine: "
        "each module warmed up (--warmup), then --runs timed runs interleaved across all modules, median reported.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder written by `privsplit train`")
    p.add_argument(
        "--bandwidth-mbps",
        type=non_negative_float,
        default=10.0,
        metavar="F",
        help="uplink bandwidth in Mbit/s (default %(default)s)",
    )
    p.add_argument("--budget-ms", type=non_negative_float, metavar="F", help="end-to-end latency budget in ms")
    p.add_argument(
        "--rtt-ms",
        type=non_negative_float,
        default=0.0,
        metavar="F",
        help="network round trip added to every split (default %(default)s)",
    )
    p.add_argument(
        "--runtime",
        choices=("onnxruntime", "torch"),
        default="onnxruntime",
        help="what times the prefixes (default %(default)s)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=1, metavar="N", help="threads for the timed runs (default %(default)s)"
    )
    p.add_argument(
        "--warmup",
        type=non_negative_int,
        default=10,
        metavar="N",
        help="unmeasured runs per module before timing (default %(default)s)",
    )
    p.add_argument(
        "--runs",
        type=positive_int,
        default=100,
        metavar="N",
        help="timed runs per module, interleaved across modules; the median is reported (default %(default)s)",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=256,
        metavar="N",
        help="holdout images for the leakage indicator (default %(default)s)",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the sample and projections (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_json_out(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from privsplit.probes.split_profile import SplitProfileSpec, SplitRuntime, profile_splits

    spec = SplitProfileSpec(
        bandwidth_mbps=args.bandwidth_mbps,
        budget_ms=args.budget_ms,
        rtt_ms=args.rtt_ms,
        runtime=SplitRuntime(args.runtime),
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        samples=args.samples,
        seed=args.seed,
    )
    result = profile_splits(args.run, spec, progress=not args.quiet)
    print(result.summary())
    if args.json is not None:
        result.save(args.json)
    return 0
