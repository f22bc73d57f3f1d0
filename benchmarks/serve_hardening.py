"""Serving hardening benchmark (issue 27): a hostile-message fuzz and a never-reading stream flood against a
real `privsplit serve` process.

* **flood**: a client process opens one stream and writes up to ``--flood`` (100,000) requests without ever
  reading a reply. ``--clients`` other clients, each its own connection, send unary requests one at a time (as
  fast as answered, or ``--client-rate`` a second, like a camera): on the unloaded server, during the flood's
  first seconds (``burst``: the writes HTTP/2's buffers still take in, i.e. a client sending at full speed)
  and once the flood is held (its written count unchanged for 1 s, or after ``--hold-wait``, 60 s: a flood
  that ``--stream-pace`` paces is measured still paced). Rounds interleaved; each round's p99 ratios to its
  own unloaded p99, medians over rounds (the machine's load drifts). The server's RSS is sampled throughout.
  ``--rate-limit R`` serves with ``--rate-limit`` and ``--device-tokens``: each
  client and the flood are then devices of their own. ``--serve-args`` passes more ``privsplit serve`` options.
* **fuzz**: ``--cases`` (10,000) hypothesis examples of malformed and hostile ModelInfer requests
  (tests/cloud_fuzz_strategies.py: huge and deep shapes, wrong datatypes, mismatched byte counts, parameter,
  output and id bombs) plus undecodable bytes. Every reply must be a deliberate status; a crash is the server
  process dying or an INTERNAL / UNKNOWN status; a hang is a call that reaches its 10 s deadline; readiness
  (ServerReady and grpc.health.v1) is checked every 250 cases, and the server's RSS with it.
  The goal's growth is the RSS after the last case over the RSS after ``--warmup`` (300) cases. Beside it, not
  instead of it, the report gives the trace (every 250 cases), the growth from case ``--settle`` (2,000) on
  and the least-squares slope per 1,000 cases from there: the allocator's warm-up (an arena per busy RPC
  thread) shows as a rise over the first ~1,000 cases and a level, a leak as a slope that stays (see
  docs/guides/device-credentials.md "The fuzz" and benchmarks/fuzz_leak_check.py).

Goals: fuzz 0 crashes, 0 hangs, ready throughout, RSS growth < 10 %; flood server RSS growth < 50 MB and the
other clients' p99 within 2x of unloaded, burst and held alike. Prints JSON (``--out``) and a table. Timed
runs (the flood) at normal priority, and record the load: the ratios are of one round to itself.

    nice -n 10 python benchmarks/serve_hardening.py --parts fuzz [--bundle OUT/cloud] [--cases 20000]
    python benchmarks/serve_hardening.py --parts flood --rounds 7 --seconds 5 --hold-wait 20 [--client-rate 50]
    python benchmarks/serve_hardening.py --parts flood --serve-args "--stream-pace off"   # the unpaced baseline
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cloud_benchmark import RESULTS, Target, digits_bundle, feature_request, free_port  # noqa: E402

from privsplit.cloud.devices import token_digest  # noqa: E402
from privsplit.results import save_json  # noqa: E402

SCHEMA_VERSION = 2  # 2: the fuzz RSS trace, growth after --settle and the slope per 1,000 cases
GOAL_FUZZ_RSS, GOAL_FLOOD_MB, GOAL_P99_RATIO = 0.10, 50.0, 2.0
READY_EVERY = 250
CALL_TIMEOUT_S = 10.0


def log(msg: str) -> None:
    print(f"[serve-hardening] {msg}", file=sys.stderr, flush=True)


def launch(command: list[str], port: int, log_path: Path, wait_s: float = 120) -> Target:
    """``privsplit serve`` in its own session; ready once grpc.health.v1 answers SERVING (no token needed)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    log(f"starting: {' '.join(command)}")
    stderr = open(log_path, "w")  # noqa: SIM115 (kept open with the process)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return Target("serve-hardening", error=f"exited {proc.returncode}, see {stderr.name}")
        with grpc.insecure_channel(target) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return Target("serve-hardening", target, proc)
            except grpc.RpcError:
                pass
        time.sleep(0.3)
    Target("serve-hardening", target, proc).stop()
    return Target("serve-hardening", error=f"not ready within {wait_s:g} s")


def device_tokens(path: Path, count: int) -> list[str]:
    """Write a --device-tokens file of ``count`` devices; return their tokens."""
    tokens = [secrets.token_urlsafe(24) for _ in range(count)]
    path.write_text("".join(f"bench-{k} {token_digest(t)}\n" for k, t in enumerate(tokens)))
    return tokens


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(metrics_port: int) -> int:
    """Successful inference requests the server has answered (its Prometheus counter)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("nv_inference_request_success")
        )
    )


def measured(server: Target, pid: int, metrics_port: int, request, args, tokens, flooder: int | None = None) -> dict:
    """:func:`closed_loop` plus what the server did meanwhile: its CPU (cores) and the requests it answered for
    others than these clients (the flood's, a second); with ``flooder`` (its pid) the flooding client's CPU too
    (on this machine it competes with the server and the clients for the same cores)."""
    cpu0, n0, t0 = cpu_s(pid), served(metrics_port), time.monotonic()
    flood0 = cpu_s(flooder) if flooder else 0.0
    out = closed_loop(server.target, request, args.clients, args.seconds, tokens, args.client_rate)
    seconds = time.monotonic() - t0
    others = served(metrics_port) - n0 - out["requests"] - args.clients  # each client connects with one request
    return {
        **out,
        "server_cores": (cpu_s(pid) - cpu0) / seconds,
        "flood_served_per_s": max(others, 0) / seconds,
        "flood_client_cores": (cpu_s(flooder) - flood0) / seconds if flooder else 0.0,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- the flooding client (a subprocess: --flood-client) --------------------------------------------------
def flood_client(target: str, count: int, bundle: Path, token: str) -> None:
    """One stream, ``count`` requests written as fast as gRPC takes them, no reply ever read (``token``: its
    device token, ``-``: none). Prints ``ready`` once connected, starts when a line arrives on stdin (so that
    this interpreter's start-up is not part of the burst phase), then prints how many it has written, 5 times a
    second, until killed."""
    import grpc

    from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

    message = feature_request(bundle).to_proto()
    written = [0]

    def requests():
        for i in range(count):
            written[0] = i + 1
            yield message

    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    print("ready", flush=True)
    sys.stdin.readline()
    _replies = stub.ModelStreamInfer(requests(), timeout=3600, metadata=auth(token))  # never read
    while True:
        print(written[0], flush=True)
        time.sleep(0.2)


def auth(token: str | None) -> tuple:
    return () if token in (None, "-") else (("authorization", f"Bearer {token}"),)


# ---- other clients ----------------------------------------------------------------------------------------
def closed_loop(
    target: str, request, clients: int, seconds: float, tokens: list[str] | None = None, rate: float | None = None
) -> dict:
    """``clients`` threads, each its own connection (and device, with ``tokens``), one request at a time; with
    ``rate``, at most that many a second each (a camera's frame rate: a late request goes at once)."""
    import grpc

    from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

    message = request.to_proto()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    end = time.monotonic() + seconds

    def one(k: int) -> None:
        md = auth(tokens[k] if tokens else None)
        # its own TCP connection: channels of one process to one target share one unless told not to
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(message, timeout=30, metadata=md)  # connect first
            slot = time.monotonic()
            while time.monotonic() < end:
                if rate:
                    slot = max(slot + 1.0 / rate, time.monotonic() - 1.0 / rate)
                    time.sleep(max(slot - time.monotonic(), 0.0))
                t0 = time.perf_counter()
                try:
                    stub.ModelInfer(message, timeout=30, metadata=md)
                    latencies[k].append(time.perf_counter() - t0)
                except grpc.RpcError:
                    errors[k] += 1

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.array([x for per in latencies for x in per]) * 1e3
    return {
        "requests": int(lat.size),
        "errors": sum(errors),
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
    }


def flood(server: Target, pid: int, metrics_port: int, request, bundle: Path, args, tokens: list[str] | None) -> dict:
    """Rounds of: other clients on the unloaded server; the flood starts and the same clients run at once
    (``burst``: the flood's first writes, which HTTP/2 buffers on both sides take in); then, once the flood
    has been held (its written count unchanged for 1 s), the clients again (``held``). ``tokens``: a device
    token for each client and, last, the flood's (with ``--rate-limit``)."""
    clients = tokens[:-1] if tokens else None
    flood_token = tokens[-1] if tokens else "-"
    rounds = []
    base_rss = rss_mb(pid)
    peak = base_rss
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        unloaded = measured(server, pid, metrics_port, request, args, clients)
        proc = subprocess.Popen(
            [sys.executable, __file__, "--flood-client", server.target, str(args.flood), str(bundle), flood_token],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("the flooding client did not connect")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        started = time.monotonic()
        timeline: list[tuple[float, int]] = [(0.0, 0)]

        def follow(p=proc, box=timeline, t0=started) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                box.append((time.monotonic() - t0, int(line)))

        samples: list[float] = []
        stop = threading.Event()

        def sample(stop=stop, samples=samples) -> None:
            while not stop.wait(0.2):
                samples.append(rss_mb(pid))

        threading.Thread(target=follow, daemon=True).start()
        sampler = threading.Thread(target=sample)
        sampler.start()
        burst = measured(server, pid, metrics_port, request, args, clients, proc.pid)
        held_at = None
        while time.monotonic() - started < args.seconds + args.hold_wait:
            now = time.monotonic() - started
            recent = [n for t, n in timeline if t >= now - 1.0]
            if len(recent) >= 4 and len(set(recent)) == 1:
                held_at = now
                break
            time.sleep(0.2)
        held = measured(server, pid, metrics_port, request, args, clients, proc.pid)
        stop.set()
        sampler.join()
        written = timeline[-1][1]
        proc.kill()
        proc.wait()
        peak = max([peak, *samples])
        log(
            f"round {r + 1}: p99 unloaded {unloaded['p99_ms']:.2f} ms, flood burst {burst['p99_ms']:.2f} ms, "
            f"flood held {held['p99_ms']:.2f} ms; the flood served {burst['flood_served_per_s']:.0f} / "
            f"{held['flood_served_per_s']:.0f} a second, server CPU {unloaded['server_cores']:.2f} / "
            f"{burst['server_cores']:.2f} / {held['server_cores']:.2f} cores; the flood wrote {written} of "
            f"{args.flood} (held after "
            f"{held_at if held_at is None else round(held_at, 1)} s); server RSS peak {max(samples):.1f} MB; "
            f"load average {load:.1f}"
        )
        rounds.append(
            {
                "unloaded": unloaded,
                "burst": burst,
                "held": held,
                "flood_written": written,
                "held_after_s": held_at,
                "rss_peak_mb": max(samples),
                "load_average": load,
            }
        )
    time.sleep(1.0)
    p99 = {k: statistics.median(r[k]["p99_ms"] for r in rounds) for k in ("unloaded", "burst", "held")}
    return {
        "rounds": rounds,
        "flood_requests": args.flood,
        "flood_written_max": max(r["flood_written"] for r in rounds),
        "rss_before_mb": base_rss,
        "rss_peak_mb": peak,
        "rss_after_mb": rss_mb(pid),
        "rss_growth_mb": peak - base_rss,
        "p99_unloaded_ms": p99["unloaded"],
        "p99_burst_ms": p99["burst"],
        "p99_held_ms": p99["held"],
        # each round's flooded p99 over the same round's unloaded one (the machine's load drifts), median over rounds
        "p99_ratio_burst": statistics.median(r["burst"]["p99_ms"] / r["unloaded"]["p99_ms"] for r in rounds),
        "p99_ratio_held": statistics.median(r["held"]["p99_ms"] / r["unloaded"]["p99_ms"] for r in rounds),
        "flood_served_per_s_burst": statistics.median(r["burst"]["flood_served_per_s"] for r in rounds),
        "flood_served_per_s_held": statistics.median(r["held"]["flood_served_per_s"] for r in rounds),
        "server_cores": {
            k: statistics.median(r[k]["server_cores"] for r in rounds) for k in ("unloaded", "burst", "held")
        },
        "flood_client_cores": {
            k: statistics.median(r[k]["flood_client_cores"] for r in rounds) for k in ("burst", "held")
        },
        "errors_unloaded": sum(r["unloaded"]["errors"] for r in rounds),
        "errors_flooded": sum(r["burst"]["errors"] + r["held"]["errors"] for r in rounds),
        "load_average": [r["load_average"] for r in rounds],
    }


# ---- fuzz -------------------------------------------------------------------------------------------------
def fuzz(server: Target, pid: int, proc: subprocess.Popen, bundle: Path, args) -> dict:
    import grpc
    from cloud_fuzz_strategies import hostile_requests, requests
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from privsplit.bundle import load_bundle
    from privsplit.proto.inference import open_inference_grpc_pb2 as pb
    from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

    b = load_bundle(bundle)
    version = b.version
    good = sorted(b.manifest["accepted_encoder_hashes"])[0]
    shape = tuple(b.features.shape)
    channel = grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    raw = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda x: x, response_deserializer=lambda x: x
    )
    codes: dict[str, int] = {}
    tally = {"cases": 0, "crashes": 0, "hangs": 0, "not_ready": 0, "internal": 0}
    rss: list[tuple[int, float]] = []  # (cases, MB) every READY_EVERY cases of the measured run

    def ready() -> bool:
        try:
            ok = stub.ServerReady(pb.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S).status
            return ok and status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def call(send) -> None:
        try:
            send()
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        codes[code.name] = codes.get(code.name, 0) + 1
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            tally["hangs"] += 1
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            tally["internal"] += 1
        tally["cases"] += 1
        if tally["cases"] % READY_EVERY == 0:
            if proc.poll() is not None:
                tally["crashes"] += 1
                raise SystemExit(f"the server died (exit {proc.returncode}) after {tally['cases']} cases")
            if not ready():
                tally["not_ready"] += 1
            rss.append((tally["cases"], rss_mb(pid)))
            if tally["cases"] % (READY_EVERY * 8) == 0:
                log(f"fuzz: {tally['cases']} cases, RSS {rss[-1][1]:.1f} MB, codes {codes}")

    junk = [b"\xff" * 7, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)), b"\x0a" * 1000]
    strategy = st.one_of(requests(version, good), hostile_requests(version, good, shape))

    def run(n: int) -> None:
        @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(msg=strategy, junk_index=st.integers(0, 40))
        def case(msg, junk_index):
            if junk_index < len(junk):  # about 1 case in 10: bytes that are not a message at all
                call(lambda: raw(junk[junk_index], timeout=CALL_TIMEOUT_S))
            else:
                call(lambda: stub.ModelInfer(msg, timeout=CALL_TIMEOUT_S))

        case()

    log(f"fuzz: warm-up ({args.warmup} cases)")
    run(args.warmup)
    warm = dict(tally)
    tally.update(cases=0, crashes=0, hangs=0, not_ready=0, internal=0)
    codes.clear()
    rss.clear()
    before = rss_mb(pid)
    rss.append((0, before))
    start = time.monotonic()
    log(f"fuzz: {args.cases} cases")
    while tally["cases"] < args.cases:  # hypothesis may stop a run early; go on until the count is reached
        run(args.cases - tally["cases"])
    seconds = time.monotonic() - start
    after = rss_mb(pid)
    still_ready = ready() and proc.poll() is None
    channel.close()
    if rss[-1][0] != tally["cases"]:
        rss.append((tally["cases"], after))
    return {
        **tally,
        "warmup": warm,
        "codes": codes,
        "seconds": seconds,
        "ready_at_end": still_ready,
        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
        "rss_before_mb": before,
        "rss_after_mb": after,
        "rss_max_mb": max(mb for _, mb in rss),
        "rss_growth": (after - before) / before,
        **rss_trend(rss, args.settle),
    }


def rss_trend(trace: list[tuple[int, float]], settle: int) -> dict:
    """What the RSS trace says beside the total growth: the growth from ``settle`` cases on (the allocator's
    warm-up is over by then, or it is not warm-up), and the least-squares slope over those cases in MB and in %
    of the ``settle`` reading per 1,000 cases. A leak shows as a slope that stays; warm-up as a level."""
    late = [(n, mb) for n, mb in trace if n >= settle]
    if len(late) < 2:
        return {"rss_trace": trace, "settle_cases": settle}
    n = np.array([c for c, _ in late], float)
    mb = np.array([m for _, m in late])
    slope = float(np.polyfit(n / 1000.0, mb, 1)[0])
    return {
        "rss_trace": trace,
        "settle_cases": settle,
        "rss_at_settle_mb": float(mb[0]),
        "rss_growth_after_settle": float((mb[-1] - mb[0]) / mb[0]),
        "rss_slope_mb_per_1000": slope,
        "rss_slope_per_1000": slope / float(mb[0]),
    }


# ---- report -----------------------------------------------------------------------------------------------
def goals(report: dict) -> dict:
    f, fl = report["fuzz"], report["flood"]
    out = {}
    if f:
        out.update(fuzz_goals(f))
    if fl:
        out.update(flood_goals(fl))
    return out


def fuzz_goals(f: dict) -> dict:
    return {
        "fuzz_cases": {"value": f["cases"], "goal": ">= 10000", "met": f["cases"] >= 10_000},
        "fuzz_crashes": {"value": f["crashes"] + f["internal"], "goal": "0", "met": f["crashes"] + f["internal"] == 0},
        "fuzz_hangs": {"value": f["hangs"], "goal": "0", "met": f["hangs"] == 0},
        "fuzz_ready": {
            "value": f["not_ready"],
            "goal": "0 readiness checks failed",
            "met": f["not_ready"] == 0 and f["ready_at_end"],
        },
        "fuzz_rss_growth": {
            "value": f["rss_growth"],
            "goal": f"< {GOAL_FUZZ_RSS:.0%}",
            "met": f["rss_growth"] < GOAL_FUZZ_RSS,
        },
    }


def flood_goals(fl: dict) -> dict:
    return {
        "flood_rss_growth_mb": {
            "value": fl["rss_growth_mb"],
            "goal": f"< {GOAL_FLOOD_MB:g} MB",
            "met": fl["rss_growth_mb"] < GOAL_FLOOD_MB,
        },
        "flood_p99_ratio": {
            "value": max(fl["p99_ratio_burst"], fl["p99_ratio_held"]),
            "goal": f"<= {GOAL_P99_RATIO:g}x (burst and held)",
            "met": max(fl["p99_ratio_burst"], fl["p99_ratio_held"]) <= GOAL_P99_RATIO,
        },
    }


def table(report: dict) -> str:
    f, fl = report["fuzz"], report["flood"]
    rows = []
    if f:
        rows += fuzz_rows(f)
    if fl:
        rows += flood_rows(fl)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    for name, g in report["goals"].items():
        value = g["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {shown:>10}  goal {g['goal']:<26} {'met' if g['met'] else 'NOT met'}")
    return "\n".join(lines)


def fuzz_rows(f: dict) -> list[tuple[str, str]]:
    return [
        ("fuzz cases (hostile + malformed + undecodable)", f"{f['cases']} in {f['seconds']:.0f} s"),
        ("fuzz crashes (server died / INTERNAL / UNKNOWN)", f"{f['crashes']} / {f['internal']}"),
        ("fuzz hangs (10 s deadline reached)", str(f["hangs"])),
        ("readiness checks failed (every 250 cases)", f"{f['not_ready']}; ready at end: {f['ready_at_end']}"),
        (
            "fuzz server RSS before -> after",
            f"{f['rss_before_mb']:.1f} -> {f['rss_after_mb']:.1f} MB ({f['rss_growth']:+.1%})",
        ),
        ("fuzz status codes", ", ".join(f"{k} {v}" for k, v in sorted(f["codes"].items()))),
        *trend_rows(f),
    ]


def trend_rows(f: dict) -> list[tuple[str, str]]:
    if "rss_slope_mb_per_1000" not in f:
        return []
    per_1000 = [f"{mb:.1f}" for n, mb in f["rss_trace"] if n % 1000 == 0 or n == f["cases"]]
    return [
        ("fuzz server RSS every 1,000 cases (MB)", " ".join(per_1000)),
        (
            f"fuzz RSS from case {f['settle_cases']} on",
            f"{f['rss_at_settle_mb']:.1f} -> {f['rss_after_mb']:.1f} MB ({f['rss_growth_after_settle']:+.1%}), slope "
            f"{f['rss_slope_mb_per_1000']:+.2f} MB ({f['rss_slope_per_1000']:+.2%}) per 1,000 cases",
        ),
        (
            "MALLOC_ARENA_MAX given to the server",
            str(f["malloc_arena_max"] or "unset: `privsplit serve` limits its arenas to 2 (privsplit.cloud.memory)"),
        ),
    ]


def flood_rows(fl: dict) -> list[tuple[str, str]]:
    return [
        ("flood: requests written of attempted (max)", f"{fl['flood_written_max']} of {fl['flood_requests']}"),
        (
            "flood server RSS before -> peak -> after",
            f"{fl['rss_before_mb']:.1f} -> {fl['rss_peak_mb']:.1f} -> {fl['rss_after_mb']:.1f} MB "
            f"({fl['rss_growth_mb']:+.1f} MB)",
        ),
        (
            "other clients' p99: unloaded / flood burst / flood held",
            f"{fl['p99_unloaded_ms']:.2f} / {fl['p99_burst_ms']:.2f} / {fl['p99_held_ms']:.2f} ms (medians)",
        ),
        (
            "p99 ratio to the same round's unloaded (median)",
            f"burst {fl['p99_ratio_burst']:.2f}x, held {fl['p99_ratio_held']:.2f}x",
        ),
        (
            "flood requests served a second: burst / held (median)",
            f"{fl['flood_served_per_s_burst']:.0f} / {fl['flood_served_per_s_held']:.0f}",
        ),
        (
            "server CPU, cores: unloaded / burst / held (median)",
            " / ".join(f"{fl['server_cores'][k]:.2f}" for k in ("unloaded", "burst", "held")),
        ),
        (
            "flooding client's own CPU, cores: burst / held (median)",
            " / ".join(f"{fl['flood_client_cores'][k]:.2f}" for k in ("burst", "held")),
        ),
        ("other clients' errors: unloaded / flooded", f"{fl['errors_unloaded']} / {fl['errors_flooded']}"),
        ("load average (1 min) at each round's start", ", ".join(f"{x:.1f}" for x in fl["load_average"])),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flood-client", nargs=4, metavar=("TARGET", "N", "BUNDLE", "TOKEN"), help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, help="digits cloud bundle (default: train + export one once)")
    ap.add_argument("--cases", type=int, default=10_000, help="fuzz cases (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=300, help="fuzz cases before the RSS baseline (default %(default)s)")
    ap.add_argument(
        "--settle",
        type=int,
        default=2000,
        help="cases of the measured run after which the RSS growth and slope are also given (default %(default)s)",
    )
    ap.add_argument(
        "--flood", type=int, default=100_000, help="requests the flooding stream writes (default %(default)s)"
    )
    ap.add_argument("--clients", type=int, default=4, help="other clients during the flood (default %(default)s)")
    ap.add_argument(
        "--client-rate", type=float, help="requests/s each other client sends at most (default: as fast as answered)"
    )
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per flood phase (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="unloaded/flooded rounds, interleaved (default %(default)s)")
    ap.add_argument(
        "--hold-wait",
        type=float,
        default=60.0,
        help="seconds after the burst phase to wait for the flood to be held before the held phase; a paced "
        "flood is never held, it is then measured still paced (default %(default)s)",
    )
    ap.add_argument("--parts", default="flood,fuzz", help="what to run: flood, fuzz or both (default %(default)s)")
    ap.add_argument(
        "--serve-args", default="", help="more `privsplit serve` options, e.g. '--stream-window 16' (default: none)"
    )
    ap.add_argument(
        "--rate-limit",
        type=float,
        help="serve with --rate-limit R: each client and the flood are then devices of their own (--device-tokens); "
        "flood part only",
    )
    ap.add_argument("--rate-burst", type=int, help="with --rate-limit: serve's --rate-burst")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_hardening.json")
    args = ap.parse_args()
    if args.flood_client:
        target, n, bundle, token = args.flood_client
        flood_client(target, int(n), Path(bundle), token)
        return 0
    parts = {p.strip() for p in args.parts.split(",")}
    if args.rate_limit is not None and "fuzz" in parts:
        ap.error("--rate-limit measures the flood only: add --parts flood")
    RESULTS.mkdir(parents=True, exist_ok=True)
    bundle = digits_bundle(args.bundle)
    port, metrics_port = free_port(), free_port()
    command = [sys.executable, "-m", "privsplit.cli.main", "serve", str(bundle), "--port", str(port)]  # defaults
    command += ["--metrics-port", str(metrics_port)]  # the flood's served count
    command += shlex.split(args.serve_args)
    tokens = None
    if args.rate_limit is not None:
        devices = args.out.with_suffix(".devices")
        tokens = device_tokens(devices, args.clients + 1)
        command += ["--device-tokens", str(devices), "--rate-limit", f"{args.rate_limit:g}"]
        command += [] if args.rate_burst is None else ["--rate-burst", str(args.rate_burst)]
    server = launch(command, port, args.out.with_suffix(".server.log"))
    if server.error or server.proc is None:
        log(f"the server did not start: {server.error}")
        return 1
    pid = server.proc.pid
    try:
        request = feature_request(bundle)
        closed_loop(server.target, request, args.clients, 2.0, tokens)  # warm-up
        report: dict = {
            "server": " ".join(command),
            "clients": args.clients,
            "client_rate": args.client_rate,
            "flood": {},
            "fuzz": {},
        }
        if "flood" in parts:
            log(f"flood: {args.rounds} rounds of {args.seconds:g} s, {args.clients} other clients")
            report["flood"] = flood(server, pid, metrics_port, request, bundle, args, tokens)
        if "fuzz" in parts:
            report["fuzz"] = fuzz(server, pid, server.proc, bundle, args)
    finally:
        server.stop()
    report["goals"] = goals(report)
    save_json(args.out, report, version=SCHEMA_VERSION, kind="serve_hardening")
    print(json.dumps(report["goals"], indent=1))
    print(table(report))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
