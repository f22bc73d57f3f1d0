"""``privsplit cloud bench``: the load probe of a running server (closed-loop concurrency sweep or open-loop --rate);
``privsplit bench cloud`` is its deprecated spelling, kept for one release."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from privsplit.cli._common import (
    add_dial_args,
    add_json_out,
    dial_token,
    non_negative_float,
    positive_float,
    positive_int,
    seed_int,
)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 1, e.g. 1,8,32")
    return values


# The old spelling, kept as an alias for one release (0.x): it works and prints a one-line deprecation note.
DEPRECATED = {"bench cloud": "cloud bench"}


def _rate_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of request rates") from None
    if not values or not all(0 < v <= 100_000 for v in values):  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r}: give request rates per second in (0, 100000], e.g. 50,200")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cloud",
        help="cloud side: load probe of a running server (cloud bench); serve it with `privsplit serve`",
        description="The cloud side of privsplit, beside `privsplit edge`. `privsplit cloud bench` measures a "
        "running `privsplit serve`.",
    )
    cloud_sub = p.add_subparsers(dest="cloud_command", metavar="ACTION")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])
    _add_cloud_bench(cloud_sub, "bench", deprecated=False)

    old = sub.add_parser(
        "bench",
        help="deprecated spelling of `privsplit cloud bench` (bench cloud), kept for one release",
        description="Deprecated: `privsplit bench cloud` is now `privsplit cloud bench` (beside `privsplit edge "
        "bench`); this spelling still works for one release and says so on stderr.",
    )
    bench_sub = old.add_subparsers(dest="bench_command", metavar="TARGET")
    old.set_defaults(handler=lambda args: (old.print_help(), 2)[1])
    _add_cloud_bench(bench_sub, "cloud", deprecated=True)
    # Other areas add `privsplit bench <target>` from privsplit/cli/bench_<target>.py (``register(bench_sub)``).
    import importlib
    import pkgutil

    import privsplit.cli

    for info in sorted(pkgutil.iter_modules(privsplit.cli.__path__), key=lambda m: m.name):
        if info.name.startswith("bench_"):
            importlib.import_module(f"privsplit.cli.{info.name}").register(bench_sub)


def _add_cloud_bench(sub: argparse._SubParsersAction, name: str, *, deprecated: bool) -> None:
    c = sub.add_parser(
        name,
        help=("deprecated: use `privsplit cloud bench`" if deprecated else "")
        + "concurrency sweep (closed loop) or request-rate probe (--rate, open loop) against a running "
        "`privsplit serve` (throughput, p50/p90/p99)",
        description="Like Triton's perf_analyzer: for each concurrency C, C closed-loop clients send ModelInfer "
        "(or keep one ModelStreamInfer stream each with --stream) for --duration seconds after a warm-up; "
        "reports throughput, latency percentiles and the server's own compute/queue time. Requests carry "
        "random int8 features of the model's shape, quantized as the bundle says, with an accepted encoder "
        "hash: from --bundle, or --encoder-hash (the shape is then read from ModelMetadata).",
    )
    c.set_defaults(deprecated_spelling="bench cloud" if deprecated else None)
    c.add_argument(
        "--target",
        required=True,
        metavar="HOST:PORT",
        help="server address; replicas: IP:PORT,IP:PORT,... or dns:///NAME:PORT (gRPC round_robin; "
        "a call that gets UNAVAILABLE from a dead replica is retried by gRPC on another)",
    )
    c.add_argument(
        "--concurrency",
        type=_int_list,
        metavar="N,N,...",
        help="closed loop: concurrency levels (default 1,8,32)",
    )
    c.add_argument(
        "--rate",
        type=_rate_list,
        metavar="R,R,...",
        help="open loop instead (perf_analyzer's request-rate mode): send R requests per second at fixed times, "
        "whether or not replies came back, and measure each latency from its scheduled send time (no "
        "coordinated omission); one level per rate",
    )
    c.add_argument(
        "--duration",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds measured per level (default %(default)s)",
    )
    c.add_argument(
        "--warmup",
        type=non_negative_float,
        default=1.0,
        metavar="S",
        help="seconds of unmeasured warm-up per level (default %(default)s)",
    )
    c.add_argument(
        "--connections",
        type=positive_int,
        metavar="N",
        help="TCP connections the clients share (default: 1 per 16 clients, at most 4); a server with "
        "--workers N spreads connections, not calls, over its processes: use several per worker",
    )
    c.add_argument(
        "--stream", action="store_true", help="use ModelStreamInfer (one stream per client) instead of unary ModelInfer"
    )
    c.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="the cloud (or edge) bundle the server runs: feature shape, quantization, encoder hash",
    )
    c.add_argument("--encoder-hash", metavar="HEX", help="an encoder hash the server accepts (instead of --bundle)")
    c.add_argument("--model-name", default="privsplit", metavar="NAME", help="model name (default %(default)s)")
    c.add_argument(
        "--rows", type=positive_int, default=1, metavar="N", help="rows (images) per request (default %(default)s)"
    )
    c.add_argument("--label-only", action="store_true", help="ask for the label only")
    add_dial_args(c)
    c.add_argument("--seed", type=seed_int, default=0, help="seed of the random features (default %(default)s)")
    add_json_out(c)
    c.set_defaults(handler=run_cloud)


def _request_spec(args, dial):
    """(feature shape, scale, zero point, encoder hash) from --bundle or from the server's metadata."""
    from privsplit.errors import ConfigError

    if args.bundle is not None:
        from privsplit.bundle import BundleKind, load_bundle

        bundle = load_bundle(args.bundle)
        f = bundle.features
        if args.encoder_hash:
            encoder_hash = args.encoder_hash
        elif bundle.kind is BundleKind.CLOUD:
            encoder_hash = sorted(bundle.manifest["accepted_encoder_hashes"])[0]
        else:
            encoder_hash = bundle.manifest["encoders"][bundle.manifest["default_encoder"]]["sha256"]
        return tuple(f.shape), f.scale, f.zero_point, encoder_hash
    if not args.encoder_hash:
        raise ConfigError("pass --bundle (the bundle the server runs) or --encoder-hash (an encoder hash it accepts)")
    shape = _metadata_shape(args, dial)
    return shape, 0.05, 0, args.encoder_hash


def _metadata_shape(args, dial) -> tuple[int, int, int]:
    """The model's feature shape from ModelMetadata (gRPC's own retry policy rides out a brief UNAVAILABLE)."""
    import dataclasses

    import grpc

    from privsplit.errors import ConfigError
    from privsplit.proto.channel import UnavailableRetry, rpc_error, stub
    from privsplit.proto.channel import dial as open_channel
    from privsplit.proto.inference import open_inference_grpc_pb2 as pb
    from privsplit.proto.messages import ModelMetadata

    channel = open_channel(dataclasses.replace(dial, retry=UnavailableRetry()))
    try:
        request = pb.ModelMetadataRequest(name=args.model_name)
        reply = stub(channel).ModelMetadata(request, timeout=10, metadata=dial.metadata)
    except grpc.RpcError as exc:
        raise ConfigError(f"ModelMetadata: {rpc_error(exc, args.target, timeout_s=10)}") from None
    finally:
        channel.close()
    shape = ModelMetadata.from_proto(reply).inputs[0].shape
    if len(shape) != 4:
        raise ConfigError(
            f"{args.target}: model {args.model_name!r} input has shape {list(shape)}, expected [-1, C, h, w]"
        )
    return tuple(int(d) for d in shape[1:])


def run_cloud(args: argparse.Namespace) -> int:
    import numpy as np

    from privsplit.cloud.loadgen import LoadSpec, run_load
    from privsplit.errors import ConfigError
    from privsplit.proto.channel import ChannelTls, DialConfig, UnavailableRetry, parse_target
    from privsplit.proto.wire import features_request

    if args.rate and args.concurrency:
        raise ConfigError("--rate (open loop) and --concurrency (closed loop) pick the mode: give one of them")
    target = parse_target(args.target, flag="--target")
    token = dial_token(args)
    tls = (
        None
        if args.tls_ca is None
        else ChannelTls.from_files(args.tls_ca, args.tls_cert, args.tls_key, server_name=args.tls_server_name)
    )
    retry = UnavailableRetry() if target.balanced else None  # replicas: gRPC retries on the next one
    dial = DialConfig(target=args.target, tls=tls, token=token, insecure=args.insecure, retry=retry)
    shape, scale, zero_point, encoder_hash = _request_spec(args, dial)
    rng = np.random.default_rng(args.seed)
    features = rng.integers(-128, 128, size=(args.rows, *shape), dtype=np.int16).astype(np.int8)
    request = features_request(
        features,
        encoder_hash=encoder_hash,
        scale=scale,
        zero_point=zero_point,
        model_name=args.model_name,
        label_only=args.label_only,
    )
    spec = LoadSpec(
        target=args.target,
        concurrency=args.concurrency or (1, 8, 32),
        rate=args.rate or (),
        duration_s=args.duration,
        warmup_s=args.warmup,
        stream=args.stream,
        connections=args.connections,
    )

    def show(point):
        level = (
            f"rate {point.offered_rate:g}/s" if point.offered_rate is not None else f"concurrency {point.concurrency}"
        )
        print(
            f"{level}: {point.throughput:.1f} req/s, p50 {point.p50_ms:.3f} ms, "
            f"p99 {point.p99_ms:.3f} ms, errors {point.errors}",
            file=sys.stderr,
            flush=True,
        )

    result = run_load(spec, request, dial=dial, label="cloud bench", progress=show)
    print(result.summary())
    if args.json is not None:
        result.save(args.json)
    failed = sum(p.errors for p in result.points)
    if all(p.requests == 0 for p in result.points):
        codes = {k: v for p in result.points for k, v in p.error_codes.items()}
        raise ConfigError(f"no request to {args.target} succeeded (errors: {json.dumps(codes)})")
    return 0 if failed == 0 else 1
