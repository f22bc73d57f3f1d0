"""``privsplit split-profile RUN``: latency, bytes, measured leakage and dCor² per candidate split; a ranking and
a suggestion."""

from __future__ import annotations

import argparse
from pathlib import Path

from privsplit.cli._common import add_json_out, non_negative_float, non_negative_int, positive_int, seed_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "split-profile",
        help="per candidate split: device latency, bytes on the wire, measured leakage; rank and suggest a split",
        description="Neurosurgeon-style split-point profile of a run's architecture: for each candidate split, the "
        "latency of the encoder prefix (onnxruntime on an exported prefix, or torch eager), of the server layers "
        "after it, the bytes of the int8 request, the uplink time at --bandwidth-mbps, the leakage measured by "
        "trained attackers (logistic regression and an MLP on the trained network's activations at that cut, "
        "held-out test, nulls beside): the private attribute's excess over max(chance, task floor, null), identity "
        "linkage's verification-AUC excess over max(0.5, null) where the data has identities, and the largest excess "
        "of every other attribute; and dCor² (bias-corrected squared distance correlation between input and "
        "activation). Ranks the splits by measured leakage (the largest excess; then dCor², then latency) and "
        "suggests the split with the lowest measured leakage within --budget-ms (or the fastest without a budget). "
        "Latency is measured on this machine: each module warmed up (--warmup), then --runs timed runs interleaved "
        "across all modules, median reported.",
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
    p.add_argument(
        "--attack-samples",
        type=positive_int,
        default=1000,
        metavar="N",
        help="trained attackers' budget: at most N training images (attacker part) and N test images (holdout) "
        "per split (default %(default)s)",
    )
    p.add_argument(
        "--attributes",
        default="all",
        metavar="all|none|A,B",
        help="other attributes the attackers read at each split (default all two-class labels but task and private)",
    )
    p.add_argument(
        "--attack-epochs",
        type=positive_int,
        default=20,
        metavar="N",
        help="the MLP attacker's epochs (early stopping; default %(default)s)",
    )
    p.add_argument(
        "--no-leakage",
        action="store_true",
        help="train no attacker: dCor² only (ranked by it), as before measured leakage",
    )
    p.add_argument(
        "--seed", type=seed_int, default=0, help="seed of the samples, projections and attackers (default %(default)s)"
    )
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
        attack_samples=args.attack_samples,
        attributes=args.attributes,
        attack_epochs=args.attack_epochs,
        measure_leakage=not args.no_leakage,
    )
    result = profile_splits(args.run, spec, progress=not args.quiet)
    print(result.summary())
    if args.json is not None:
        result.save(args.json)
    return 0
