"""Replica failover: two `privsplit serve` replicas on loopback, one SIGKILLed in the middle of a run.

    python benchmarks/replica_benchmark.py [--bundle OUT/cloud] [--requests 2000] [--concurrency 8]

The goal of the cloud issue: "Two replicas: 0 lost requests when one is killed mid-run". The device
client (`EdgeClient`, target `IP:PORT,IP:PORT`, gRPC round_robin, retries on UNAVAILABLE within each
call's deadline) sends --requests requests with --concurrency in flight; after --kill-at of them are
answered, one replica gets SIGKILL. Every request is counted: answered (with its own id and the label
the replicas gave it before the kill), failed with an explicit error, answered twice, or lost (no
outcome at all). Also reports the client's retries and the throughput before and after the kill.
Writes benchmarks/results/replica_benchmark.json; exits 1 when the goal is missed.
Without --bundle it uses the cloud bundle that cloud_benchmark.py trains and caches.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from privsplit.results import save_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCHEMA_VERSION = 1


def start_replica(bundle: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "privsplit.cli.main", "serve", str(bundle), "--port", "0", "--grace", "5"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"listening on \S+:(\d+)", line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep draining
            return proc, int(found.group(1))
    raise RuntimeError(f"{bundle}: the replica did not start (exit {proc.wait()})")


def failover_run(bundle: Path, *, requests: int = 2000, concurrency: int = 8, kill_at: float = 0.35) -> dict:
    """Counts of one failover run (see the module doc)."""
    from privsplit.bundle import BundleKind, load_bundle
    from privsplit.edge.client import ClientConfig, EdgeClient, RetryPolicy
    from privsplit.proto import Prediction, features_request
    from privsplit.proto.status import ProtocolError

    spec = load_bundle(bundle, kind=BundleKind.CLOUD)
    encoder_hash = sorted(spec.manifest["accepted_encoder_hashes"])[0]
    rng = np.random.default_rng(0)
    distinct = rng.integers(-128, 128, size=(64, *spec.features.shape), dtype=np.int16).astype(np.int8)
    payloads = [
        features_request(
            distinct[i % 64 : i % 64 + 1],
            encoder_hash=encoder_hash,
            scale=spec.features.scale,
            zero_point=spec.features.zero_point,
            request_id=f"r{i}",
        )
        .to_proto()
        .SerializeToString()
        for i in range(requests)
    ]
    replicas = [start_replica(bundle), start_replica(bundle)]
    target = ",".join(f"127.0.0.1:{port}" for _, port in replicas)
    outcomes: dict[int, list] = {i: [] for i in range(requests)}
    lock, answered, marks = threading.Lock(), [0], {}
    kill_after = max(1, int(requests * kill_at))
    retry = RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.5)
    try:
        with EdgeClient(ClientConfig(target=target, retry=retry, timeout_s=20.0, seed=0)) as client:
            expected = [int(client.infer_payload(payloads[i]).label[0]) for i in range(min(64, requests))]

            def one(i: int) -> None:
                try:
                    outcome: object = client.infer_response(payloads[i])
                except ProtocolError as exc:
                    outcome = exc
                with lock:
                    outcomes[i].append(outcome)
                    answered[0] += 1
                    if answered[0] == kill_after:
                        marks["kill_s"], marks["retries"] = time.perf_counter(), client.retries
                        replicas[1][0].kill()

            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(one, range(requests)))
            ended = time.perf_counter()
            retries_after_kill = client.retries - marks.get("retries", client.retries)
    finally:
        for proc, _ in replicas:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    ok = wrong = errors = 0
    error_codes: dict[str, int] = {}
    for i, got in outcomes.items():
        if len(got) != 1:
            continue
        if isinstance(got[0], ProtocolError):
            errors += 1
            error_codes[got[0].code.value] = error_codes.get(got[0].code.value, 0) + 1
        elif got[0].id == f"r{i}" and int(Prediction.from_response(got[0]).label[0]) == expected[i % 64]:
            ok += 1
        else:
            wrong += 1
    kill_s = marks.get("kill_s", ended)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "killed_after_answers": kill_after,
        "answered": ok,
        "wrong_answer": wrong,
        "explicit_errors": errors,
        "error_codes": error_codes,
        "answered_twice": sum(len(got) > 1 for got in outcomes.values()),
        "lost": sum(len(got) == 0 for got in outcomes.values()),
        "retries_after_kill": retries_after_kill,
        "seconds": round(ended - started, 3),
        "req_per_s_before_kill": round(kill_after / (kill_s - started), 1),
        "req_per_s_after_kill": round((requests - kill_after) / max(ended - kill_s, 1e-9), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="cloud bundle (default: the one cloud_benchmark.py caches)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--kill-at", type=float, default=0.35, help="fraction of answers before the kill")
    ap.add_argument("--out", type=Path, default=RESULTS / "replica_benchmark.json")
    args = ap.parse_args()
    bundle = args.bundle
    if bundle is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from cloud_benchmark import ensure_bundle

        bundle = ensure_bundle(None)
    result = failover_run(bundle, requests=args.requests, concurrency=args.concurrency, kill_at=args.kill_at)
    met = result["lost"] == 0 and result["answered_twice"] == 0 and result["answered"] == result["requests"]
    shown = os.path.relpath(bundle, ROOT)  # no absolute path of this machine in the results
    report = {"schema_version": SCHEMA_VERSION, "bundle": shown, **result, "goal_0_lost_met": met}
    save_json(args.out, report)
    for key, value in report.items():
        print(f"{key:>24}: {value}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
