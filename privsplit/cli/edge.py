"""``privsplit edge infer`` and ``privsplit edge bench``: the device side (no torch is imported)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from privsplit.cli._common import (
    add_dial_args,
    dial_token,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
)
from privsplit.cli._trust import add_trust_args, open_verified
from privsplit.results import dumps

_RUNTIMES = ("litert", "tflite-runtime", "onnxruntime")


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "bundle",
        type=Path,
        metavar="BUNDLE",
        help="edge bundle folder (OUT/edge from `privsplit export`, or DEVICE/current)",
    )
    add_trust_args(p)
    p.add_argument(
        "--runtime", choices=_RUNTIMES, help="interpreter (default: the best installed one for the chosen encoder)"
    )
    p.add_argument(
        "--encoder",
        metavar="FORMAT",
        help="encoder format in the bundle, e.g. tflite-int8 (default: the bundle's default)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=1, metavar="N", help="interpreter threads (default %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=seed_int,
        metavar="N",
        help="seed of the channel noise (default: OS entropy; set only to reproduce results)",
    )


def _client_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--server",
        required=required,
        metavar="HOST:PORT",
        help="the cloud server (`privsplit serve`); replicas: IP:PORT,IP:PORT,... or dns:///NAME:PORT "
        "(gRPC round_robin; a call that fails on a dead replica is retried on another)",
    )
    p.add_argument(
        "--model-name", default="privsplit", metavar="NAME", help="model name on the server (default %(default)s)"
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="deadline of each call in seconds, its retries included (default %(default)s)",
    )
    p.add_argument(
        "--retries",
        type=non_negative_int,
        default=4,
        metavar="N",
        help="retries on UNAVAILABLE, with exponential backoff and jitter (default %(default)s)",
    )
    add_dial_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edge",
        help="device side: run the encoder and ask the cloud (infer), measure latency (bench)",
        description="The device side of privsplit. Needs only `pip install privsplit[edge]` (no torch).",
    )
    edge_sub = p.add_subparsers(dest="edge_command", metavar="ACTION")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])

    i = edge_sub.add_parser(
        "infer",
        help="classify images: encode on the device, send int8 features to the server",
        description="Verify the edge bundle, decode and preprocess each image as its manifest says, run the encoder, "
        "add the channel noise, quantize the features to int8 and send them to the server. Every input yields a "
        "prediction or an explicit error; exits 1 when any input failed.",
    )
    _pipeline_args(i)
    i.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders of images")
    _client_args(i, required=True)
    i.add_argument(
        "--batch-size", type=positive_int, default=1, metavar="N", help="images per request (default %(default)s)"
    )
    i.add_argument("--stream", action="store_true", help="send over one ModelStreamInfer stream instead of unary calls")
    i.add_argument("--label-only", action="store_true", help="ask for labels only (no probabilities)")
    i.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    i.set_defaults(handler=run_infer)

    b = edge_sub.add_parser(
        "bench",
        help="latency probe (like TFLite's benchmark_model): init, first, p50/p90/p99, stages, RSS, bytes",
        description="Measure the device path for one image per request: "
        "decode, preprocess, encode, quantize, serialize "
        "and (with --server) the round trip. Reports init and first-inference time, mean/p50/p90/p99, a per-stage "
        "breakdown, peak RSS and bytes per request. Run each backend with the same settings to compare them.",
    )
    _pipeline_args(b)
    _client_args(b, required=False)
    b.add_argument(
        "--warmup",
        type=non_negative_int,
        default=10,
        metavar="N",
        help="unmeasured runs after the first (default %(default)s)",
    )
    b.add_argument("--runs", type=positive_int, default=100, metavar="N", help="measured runs (default %(default)s)")
    b.add_argument(
        "--max-seconds",
        type=positive_float,
        metavar="S",
        help="stop measuring after S seconds even if fewer runs were made",
    )
    b.add_argument(
        "--image", type=Path, metavar="FILE", help="input image (default: a synthetic JPEG at the model size)"
    )
    b.add_argument(
        "--frames", action="store_true", help="feed a decoded uint8 frame (camera) instead of decoding a file each run"
    )
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON to FILE")
    b.set_defaults(handler=run_bench)

    s = edge_sub.add_parser(
        "selftest",
        help="on-device acceptance check: the bundle's reference vectors, int8 features bit for bit",
        description="Verify the edge bundle (hashes, and the signature against the device's trust root or "
        "--trust-key), then run every shipped encoder "
        "this device has a runtime for on the bundle's reference vectors (inputs and expected int8 wire features "
        "written by export) without channel noise, and compare bit for bit. Exits 9 when any value differs "
        "(naming how many and the largest difference); a bundle without vectors passes with a note.",
    )
    s.add_argument("bundle", type=Path, metavar="BUNDLE", help="DEVICE/current or an edge bundle folder")
    add_trust_args(s)
    s.add_argument("--json", action="store_true", help="print the result as JSON instead of one line")
    s.set_defaults(handler=run_selftest)


def client_config(args: argparse.Namespace):
    from privsplit.edge.client import ClientConfig, ClientTls, RetryPolicy
    from privsplit.errors import ConfigError

    token = dial_token(args)
    tls = None
    if args.tls_ca is not None:
        tls = ClientTls(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)
    if args.retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {args.retries}")
    return ClientConfig(
        target=args.server,
        tls=tls,
        token=token,
        timeout_s=args.timeout,
        retry=RetryPolicy(attempts=args.retries + 1),
        model_name=args.model_name,
        insecure=args.insecure,
    )


def check_edge_bundle_path(path: Path) -> None:
    """Edge commands take OUT/edge or DEVICE/current: name the right folder when given another."""
    from privsplit.errors import BundleError

    if not path.exists():
        raise BundleError(
            f"edge bundle folder {path} does not exist: pass OUT/edge (from `privsplit export`) or DEVICE/current"
        )
    if (path / "releases").is_dir() and not (path / "manifest.json").exists():
        hint = f"pass {path / 'current'}" if (path / "current").exists() else "flash a bundle there first"
        raise BundleError(f"{path} is a device folder, not a bundle: {hint} (the active release)")
    if (path / "edge").is_dir() and not (path / "manifest.json").exists():
        raise BundleError(f"{path} is an export folder: pass {path / 'edge'} (or DEVICE/current)")


def run_infer(args: argparse.Namespace) -> int:
    from privsplit.edge.client import EdgeClient
    from privsplit.edge.infer import infer_inputs
    from privsplit.edge.pipeline import EdgePipeline

    config = client_config(args)
    check_edge_bundle_path(args.bundle)
    pipeline = EdgePipeline.open(
        open_verified(args, "edge infer"),
        encoder=args.encoder,
        runtime=args.runtime,
        threads=args.threads,
        seed=args.seed,
    )
    with EdgeClient(config) as client:
        report = infer_inputs(
            pipeline, client, args.images, batch_size=args.batch_size, stream=args.stream, label_only=args.label_only
        )
    print(dumps(report.to_json()) if args.json else report.summary(), end="" if args.json else "\n")
    if report.stopped_by:
        print(f"privsplit edge infer: error: {report.stopped_by} ({report.skipped} input(s) skipped)", file=sys.stderr)
        return 1
    errors = {r.error for r in report.results if not r.ok}
    if report.results and report.failed == len(report.results) and len(errors) == 1:
        print(f"privsplit edge infer: error: {errors.pop()}", file=sys.stderr)
    return 0 if report.failed == 0 else 1


# Options of the connection to the server: meaningless (and refused, not ignored) without --server.
_DIAL_FLAGS = (
    ("--token-file", "token_file"),
    ("--tls-ca", "tls_ca"),
    ("--tls-cert", "tls_cert"),
    ("--tls-key", "tls_key"),
    ("--tls-server-name", "tls_server_name"),
)


def run_bench(args: argparse.Namespace) -> int:
    from privsplit.edge.latency import BenchSpec, InputKind
    from privsplit.edge.latency import run_bench as bench

    if args.server is None:
        from privsplit.errors import ConfigError

        given = [flag for flag, dest in _DIAL_FLAGS if getattr(args, dest) is not None]
        if given:
            raise ConfigError(f"{given[0]} is for the round trip to a server: add --server HOST:PORT or drop it")
    check_edge_bundle_path(args.bundle)
    spec = BenchSpec(
        runtime=args.runtime,
        encoder=args.encoder,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        max_seconds=args.max_seconds,
        server=args.server,
        input=InputKind.FRAME if args.frames else InputKind.FILE,
        image=None if args.image is None else str(args.image),
        seed=0 if args.seed is None else args.seed,
    )
    bundle = open_verified(args, "edge bench")
    result = bench(bundle, spec, client_config=None if args.server is None else client_config(args))
    print(result.summary())
    if args.json is not None:
        result.save(args.json)
    return 0


def run_selftest(args: argparse.Namespace) -> int:
    from privsplit.edge.acceptance import AcceptanceError, check_bundle

    check_edge_bundle_path(args.bundle)
    result = check_bundle(open_verified(args, "edge selftest"))  # the signature first, then the vectors
    if args.json:
        print(dumps(result.to_json()), end="")
    if not result.ok:
        raise AcceptanceError(result.summary())  # one line on stderr, exit 9
    if not args.json:
        print(result.summary())
    return 0
