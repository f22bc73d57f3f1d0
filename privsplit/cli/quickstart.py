"""``privsplit quickstart``: the whole path on one dataset, ending in a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from privsplit.cli._common import positive_float, positive_int, seed_int


def _weights(text: str) -> tuple[float, ...]:
    if not text.strip():
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if any(v < 0 or v != v for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: adversary weights must be >= 0")
    return values


def _levels(text: str) -> tuple[int, ...]:
    return tuple(positive_int(v) for v in text.split(","))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole path on one dataset: train, purify, export, flash, serve, infer, measure, report",
        description="Train an unprotected and a protected split model (plus --curve points), probe what their features "
        "leak, train the purifier and probe what the returned scores leak, export the protected encoder to signed INT8 "
        "TFLite + ONNX bundles, flash the edge bundle to a device folder, "
        "start `privsplit serve` on a free loopback port, "
        "classify holdout images from the device over gRPC, measure device latency per installed backend and cloud "
        "latency/throughput, stop the service with SIGTERM, and write OUT/report.html (self-contained), OUT/report.md "
        "and OUT/summary.json. The default data, scikit-learn's digits (task digit, private attribute slant), ships "
        "with the install.",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/quickstart"), metavar="DIR", help="folder to write (default %(default)s)"
    )
    p.add_argument(
        "--data", default="digits", metavar="SPEC", help="dataset spec as for `privsplit train` (default %(default)s)"
    )
    p.add_argument("--task", metavar="NAME", help="main task (default: the dataset's, e.g. digit / Smiling)")
    p.add_argument("--private", metavar="NAME", help="private attribute (default: the dataset's, e.g. slant / Male)")
    p.add_argument("--image-size", type=positive_int, metavar="N", help="resize images to N x N (default per dataset)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N images")
    p.add_argument(
        "--seed", type=seed_int, default=0, help="seed of split, training, noise and attackers (default %(default)s)"
    )
    p.add_argument(
        "--epochs", type=positive_int, metavar="N", help="training epochs of every model (default: the recipes' own)"
    )
    p.add_argument(
        "--curve",
        type=_weights,
        default=(0.0,),
        metavar="W,W",
        help="adversary weights of extra protected models: points on the privacy-utility curve "
        "(default 0 = bottleneck and noise only; '' for none)",
    )
    p.add_argument(
        "--purifier-epochs",
        type=positive_int,
        default=300,
        metavar="N",
        help="purifier training epochs (default %(default)s)",
    )
    p.add_argument(
        "--probe-epochs",
        type=positive_int,
        metavar="N",
        help="training budget of the feature probe's attackers (default: the probe's own)",
    )
    p.add_argument(
        "--edge-runs",
        type=positive_int,
        default=200,
        metavar="N",
        help="measured requests per device backend (default %(default)s)",
    )
    p.add_argument(
        "--load-seconds",
        type=positive_float,
        default=3.0,
        metavar="S",
        help="seconds of cloud load per concurrency level (default %(default)s)",
    )
    p.add_argument(
        "--smallest",
        action="store_true",
        help="the cheapest settings that still tell the story (few epochs, short measurements)",
    )
    p.add_argument("--force", action="store_true", help="replace a previous quickstart in DIR")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted quickstart in DIR (same options): trained models and probes are "
        "kept, an interrupted training continues from its last epoch checkpoint, the export and later "
        "stages run again",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    from privsplit.quickstart import QuickstartConfig, run_quickstart

    if args.quiet:
        os.environ["PRIVSPLIT_PROGRESS"] = "0"
    options = dict(
        data=args.data,
        task=args.task,
        private=args.private,
        image_size=args.image_size,
        limit=args.limit,
        seed=args.seed,
        progress=not args.quiet,
    )
    if args.smallest:
        config = QuickstartConfig.smallest(args.out, **options)
    else:
        config = QuickstartConfig(
            out=args.out,
            curve_weights=args.curve,
            purifier_epochs=args.purifier_epochs,
            edge_runs=args.edge_runs,
            load_seconds=args.load_seconds,
            **options,
        )
    changes = {"epochs": args.epochs, "probe_epochs": args.probe_epochs}
    config = config.with_(**{k: v for k, v in changes.items() if v is not None})
    if args.force and args.resume:
        from privsplit.errors import ConfigError

        raise ConfigError("--force replaces the quickstart that --resume continues: give one of them")
    html = run_quickstart(config, force=args.force, resume=args.resume)
    print(f"report: {html}")
    print(f"        {html.with_suffix('.md')}")
    print(f"        {html.parent / 'summary.json'}")
    return 0
