"""Is the fuzz's RSS growth a leak? (issue 27; companion of benchmarks/serve_hardening.py --parts fuzz)

The same hostile and malformed ModelInfer cases (tests/cloud_fuzz_strategies.py), sent over real gRPC to a server
running in this process, with :mod:`tracemalloc` on. Every ``--every`` cases it records the Python memory that the
server's own code and gRPC's Python layer hold (allocations made in files under privsplit/ and grpc/; the
hypothesis client's own caches are left out), the number of objects the garbage collector tracks, and the
process's RSS. A leak in the serving path shows as traced memory that keeps rising after ``--settle`` cases; a
level trace beside a rising RSS puts the growth in native memory (gRPC core, the allocator's arenas).

    nice -n 10 python benchmarks/fuzz_leak_check.py [--cases 10000] [--every 1000] [--settle 2000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cloud_benchmark import RESULTS, digits_bundle  # noqa: E402
from serve_hardening import rss_mb  # noqa: E402

from privsplit.results import save_json  # noqa: E402

SCHEMA_VERSION = 1
WATCHED = ("/privsplit/", "/cloud/", "/proto/", "/grpc/")  # the serving path's Python files (editable installs too)


def log(msg: str) -> None:
    print(f"[fuzz-leak] {msg}", file=sys.stderr, flush=True)


def traced_bytes(snapshot: tracemalloc.Snapshot) -> int:
    filters = [tracemalloc.Filter(True, f"*{part}*") for part in WATCHED]
    return sum(stat.size for stat in snapshot.filter_traces(filters).statistics("filename"))


def main() -> int:
    import grpc
    from cloud_fuzz_strategies import hostile_requests, requests
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from privsplit.bundle import load_bundle
    from privsplit.cloud import ServeConfig, create_server
    from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--settle", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=RESULTS / "fuzz_leak_check.json")
    args = ap.parse_args()
    bundle = digits_bundle(None)
    b = load_bundle(bundle)
    good = sorted(b.manifest["accepted_encoder_hashes"])[0]
    strategy = st.one_of(requests(b.version, good), hostile_requests(b.version, good, tuple(b.features.shape)))
    srv, port = create_server(ServeConfig(bundle=bundle, port=0))
    srv.start()
    tracemalloc.start(1)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    done = [0]
    trace: list[dict] = []

    def record() -> None:
        gc.collect()
        trace.append(
            {
                "cases": done[0],
                "traced_kb": traced_bytes(tracemalloc.take_snapshot()) / 1024,
                "gc_objects": len(gc.get_objects()),
                "rss_mb": rss_mb(os.getpid()),
            }
        )
        log(f"{trace[-1]}")

    @settings(max_examples=args.every, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(msg=strategy)
    def case(msg):
        try:
            stub.ModelInfer(msg, timeout=10)
        except grpc.RpcError:
            pass
        done[0] += 1

    record()
    start = time.monotonic()
    while done[0] < args.cases:
        target = done[0] + args.every
        while done[0] < target:
            case()
        record()
    channel.close()
    srv.stop(0)
    late = [t for t in trace if t["cases"] >= args.settle]
    report = {
        "cases": done[0],
        "seconds": time.monotonic() - start,
        "settle_cases": args.settle,
        "trace": trace,
        "traced_kb_change_after_settle": late[-1]["traced_kb"] - late[0]["traced_kb"],
        "gc_objects_change_after_settle": late[-1]["gc_objects"] - late[0]["gc_objects"],
        "rss_mb_change_after_settle": late[-1]["rss_mb"] - late[0]["rss_mb"],
    }
    save_json(args.out, report, version=SCHEMA_VERSION, kind="fuzz_leak_check")
    print(json.dumps({k: v for k, v in report.items() if k != "trace"}, indent=1))
    for t in trace:
        print(
            f"{t['cases']:>7}  traced {t['traced_kb']:9.1f} KB  gc objects {t['gc_objects']:>8}  "
            f"RSS {t['rss_mb']:.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
