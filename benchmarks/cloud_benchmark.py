"""Cloud backend benchmark: throughput and latency of `privsplit serve` against the limit.

    python benchmarks/cloud_benchmark.py [--bundle OUT/cloud] [--duration 5] [--soak 60]

Measures, on this machine (client and server share its cores; say so when reporting):
1. raw onnxruntime throughput of the bundle's server layers (+ purifier) at batch 1, 8, 32, 64;
2. bare Python gRPC echoes (the same method paths and serialised request bytes; the synchronous server
   `privsplit serve` uses, and grpc.aio beside it) at the same concurrencies: the transport's limit;
3. `privsplit serve` with batching off (--max-batch 1) and on (--max-batch 64), unary ModelInfer at
   concurrency 1, 8, 32, 64, and streaming with batching on;
4. a soak: 64 clients for --soak seconds against the batching server: errors and resident memory.

Then checks the goals of the cloud issue and writes benchmarks/results/cloud_benchmark.json and .txt.
Without --bundle it trains a small digits run (2 epochs) and exports its cloud bundle once, cached
under benchmarks/results/cloud_bundle/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from privsplit.results import save_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCHEMA_VERSION = 1


# ---- bare echo servers (run as a subprocess: --echo-server sync|aio) ----------------------------------
def echo_server(kind: str) -> None:
    """The same method paths, replying with the request's own bytes: the transport alone. ``sync`` is the
    server flavour `privsplit serve` uses (grpc.server + thread pool); ``aio`` is grpc.aio."""
    import grpc

    ident = lambda b: b  # noqa: E731

    def handlers(unary, stream):
        return grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
                "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream, ident, ident),
            },
        )

    if kind == "sync":
        from concurrent.futures import ThreadPoolExecutor

        def stream(request_iterator, context):
            yield from request_iterator

        server = grpc.server(ThreadPoolExecutor(max_workers=128))
        server.add_generic_rpc_handlers((handlers(lambda request, context: request, stream),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        server.wait_for_termination()
        return

    async def main():
        async def unary(request, context):
            return request

        async def stream(request_iterator, context):
            async for request in request_iterator:
                yield request

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handlers(unary, stream),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


# ---- helpers ------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[cloud-bench] {msg}", file=sys.stderr, flush=True)


def ensure_bundle(path: Path | None) -> Path:
    if path is not None:
        return path
    cached = RESULTS / "cloud_bundle"
    if (cached / "cloud" / "manifest.json").is_file():
        return cached / "cloud"
    import torch

    from privsplit.export import ExportFormat, export_run
    from privsplit.train import TrainConfig, train_run

    torch.set_num_threads(2)
    log("training a digits run (2 epochs) and exporting its cloud bundle")
    run = train_run("digits", RESULTS / "cloud_run", seed=0, config=TrainConfig.unprotected(epochs=2), progress=False)
    export_run(
        run,
        cached,
        formats=(ExportFormat.ONNX_FP32,),
        calibration=64,
        holdout_limit=128,
        overwrite=True,
        progress=False,
    )
    return cached / "cloud"


class Proc:
    """A subprocess that logs 'listening on HOST:PORT' on stderr."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            found = re.search(r"listening on (\S+):(\d+)", line)
            if found:
                self.target = f"127.0.0.1:{found.group(2)}"
                return
        self.proc.kill()
        raise RuntimeError(f"{args} did not start")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def serve_args(bundle: Path, max_batch: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "privsplit.cli.main",
        "serve",
        str(bundle),
        "--port",
        "0",
        "--max-batch",
        str(max_batch),
    ]


def raw_ort(bundle: Path, batches: tuple[int, ...], seconds: float) -> dict:
    from privsplit.cloud.model_host import ModelHost

    host = ModelHost.open(bundle, name="privsplit")
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        x = rng.standard_normal((b, *host.spec.feature_shape)).astype(np.float32)
        for _ in range(20):
            host.infer(x)
        times = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t = time.perf_counter()
            host.infer(x)
            times.append(time.perf_counter() - t)
        med = float(np.median(times))
        out[str(b)] = {"batch": b, "median_ms": med * 1e3, "rows_per_s": b / med, "calls": len(times)}
        log(f"raw onnxruntime batch {b}: {med * 1e3:.3f} ms, {b / med:.0f} rows/s")
    return out


def load(
    target: str, request, concurrency, duration: float, *, stream: bool = False, label: str = "", parse: bool = True
):
    from privsplit.cloud.loadgen import LoadSpec, run_load

    spec = LoadSpec(
        target=target,
        concurrency=tuple(concurrency),
        duration_s=duration,
        warmup_s=min(1.0, duration / 2),
        stream=stream,
        parse_replies=parse,
    )
    result = run_load(spec, request, label=label)
    log("\n" + result.summary())
    return result


def point(result, c: int):
    return next(p for p in result.points if p.concurrency == c)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--echo-server", choices=["sync", "aio"], help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, help="cloud bundle (default: train + export a small digits run once)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per concurrency level (default 5)")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--soak", type=float, default=60.0, help="seconds of the 64-client soak (0 skips it)")
    ap.add_argument("--out", type=Path, default=RESULTS / "cloud_benchmark.json")
    args = ap.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return 0

    from privsplit.bundle import load_bundle
    from privsplit.proto.wire import features_request

    conc = tuple(int(c) for c in args.concurrency.split(","))
    bundle_dir = ensure_bundle(args.bundle)
    bundle = load_bundle(bundle_dir)
    f = bundle.features
    q = np.random.default_rng(0).integers(-128, 128, size=(1, *f.shape), dtype=np.int16).astype(np.int8)
    request = features_request(
        q, encoder_hash=sorted(bundle.manifest["accepted_encoder_hashes"])[0], scale=f.scale, zero_point=f.zero_point
    )
    report: dict = {
        "schema_version": SCHEMA_VERSION,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "bundle": {
            "version": bundle.version,
            "purifier": bundle.manifest.get("purifier") is not None,
            "feature_shape": list(f.shape),
        },
    }

    report["raw_ort"] = raw_ort(bundle_dir, tuple(sorted(set(conc) | {1})), seconds=2.0)

    echoes = {}
    for kind in ("sync", "aio"):
        echo = Proc([sys.executable, __file__, "--echo-server", kind])
        try:
            echoes[kind] = (
                load(echo.target, request, conc, args.duration, label=f"{kind} echo unary", parse=False),
                load(
                    echo.target, request, (1, 32), args.duration, stream=True, label=f"{kind} echo stream", parse=False
                ),
            )
        finally:
            echo.stop()
    report["echo"] = {kind: {"unary": u.to_json(), "stream": st.to_json()} for kind, (u, st) in echoes.items()}
    echo_unary = echoes["sync"][0]  # the same gRPC server flavour as `privsplit serve`

    off = Proc(serve_args(bundle_dir, 1))
    try:
        off_unary = load(off.target, request, conc, args.duration, label="serve, batching off")
    finally:
        report["serve_off_exit"] = off.stop()
    on = Proc(serve_args(bundle_dir, 64))
    try:
        on_unary = load(on.target, request, conc, args.duration, label="serve, batching on (max 64)")
        on_stream = load(on.target, request, (1, 32), args.duration, stream=True, label="serve stream, batching on")
        soak = None
        if args.soak > 0:
            rss0 = on.rss_kb()
            soak = load(on.target, request, (64,), args.soak, label=f"soak: 64 clients, {args.soak:g} s")
            rss1 = on.rss_kb()
            report["soak"] = {
                "result": soak.to_json(),
                "rss_kb_before": rss0,
                "rss_kb_after": rss1,
                "rss_growth": (rss1 - rss0) / rss0 if rss0 else None,
            }
    finally:
        report["serve_on_exit"] = on.stop()
    report["serve"] = {
        "off_unary": off_unary.to_json(),
        "on_unary": on_unary.to_json(),
        "on_stream": on_stream.to_json(),
    }

    # ---- goals ------------------------------------------------------------------------------------------
    goals = {}
    c_hi = 32 if 32 in conc else max(conc)
    on_hi, off_hi, echo_hi = point(on_unary, c_hi), point(off_unary, c_hi), point(echo_unary, c_hi)
    ort_hi = report["raw_ort"].get(str(c_hi), {}).get("rows_per_s", float("inf"))
    limit = min(echo_hi.throughput, ort_hi)
    goals["batched_vs_unbatched"] = {
        "value": on_hi.throughput / off_hi.throughput,
        "goal": ">= 3",
        "ok": on_hi.throughput >= 3 * off_hi.throughput,
    }
    aio_hi = point(echoes["aio"][0], c_hi).throughput
    goals["batched_vs_limit"] = {
        "value": on_hi.throughput / limit,
        "limit_req_per_s": limit,
        "goal": ">= 0.7",
        "vs_aio_echo": on_hi.throughput / min(aio_hi, ort_hi),
        "ok": on_hi.throughput >= 0.7 * limit,
    }
    budget = report["raw_ort"]["1"]["median_ms"] + point(echo_unary, 1).p50_ms + 0.2
    c1 = point(on_unary, 1).p50_ms if 1 in conc else float("nan")
    budget_aio = report["raw_ort"]["1"]["median_ms"] + point(echoes["aio"][0], 1).p50_ms + 0.2
    goals["latency_c1"] = {
        "p50_ms": c1,
        "budget_ms": budget,
        "budget_with_aio_echo_ms": budget_aio,
        "goal": "<= raw compute + echo + 0.2 ms",
        "ok": c1 <= budget,
    }
    if "soak" in report:
        sp = soak.points[0]
        growth = report["soak"]["rss_growth"]
        goals["soak"] = {
            "errors": sp.errors,
            "requests": sp.requests,
            "rss_growth": growth,
            "goal": "0 errors, RSS growth < 10 %",
            "ok": sp.errors == 0 and growth is not None and growth < 0.10,
        }
    report["goals"] = goals
    report["machine"]["loadavg_end"] = os.getloadavg()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_json(args.out, report)
    lines = [
        f"cloud benchmark ({os.cpu_count()} CPUs shared by client and server; load average at start "
        f"{report['machine']['loadavg_start'][0]:.1f}, at end {report['machine']['loadavg_end'][0]:.1f})",
        "",
        "raw onnxruntime: "
        + ", ".join(
            f"batch {v['batch']}: {v['median_ms']:.3f} ms ({v['rows_per_s']:.0f} rows/s)"
            for v in report["raw_ort"].values()
        ),
        "",
    ]
    for res in (*echoes["sync"], *echoes["aio"], off_unary, on_unary, on_stream, *([soak] if soak else [])):
        lines += [res.summary(), ""]
    lines.append("goals:")
    for name, g in goals.items():
        lines.append(
            f"  {name}: {'PASS' if g['ok'] else 'MISS'} {json.dumps({k: v for k, v in g.items() if k != 'ok'})}"
        )
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
