"""Cloud backend benchmark (issue 11): `privsplit serve` against a bare gRPC echo, its --workers, KServe and Triton.

    python benchmarks/cloud_benchmark.py [--quick] [--bundle OUT/cloud] [--mbv2-bundle OUT/cloud]

One run, one client (the load probe, :mod:`privsplit.cloud.loadgen`: pre-serialised requests over loopback,
closed loop), one digits bundle, every target measured at concurrency 1, 8 and 32 in interleaved rounds;
the table gives medians over the rounds (requests/s, p50, p99). Targets:

* ``echo``: a bare Python gRPC echo (grpc.server + thread pool, the flavour `privsplit serve` uses) on
  the same method path, answering the request's bytes: the transport alone;
* ``serve``: `privsplit serve` (one process); ``serve-w2``: `privsplit serve --workers 2` where
  --workers starts server processes (on a branch where it sets threads the row says unavailable);
* ``kserve``: `privsplit serve --engine kserve` (KServe's ModelServer hosting the same bundle; may run
  under another interpreter, --kserve-python); unavailable when the CLI refuses the engine;
* ``triton``: ``tritonserver`` on the Triton repository of ``--triton-repo``, where the binary exists;
  otherwise "not run";
* ``mbv2-batched`` / ``mbv2-unbatched``: `privsplit serve` of a MobileNetV2 96 px cloud bundle with
  --max-batch 64 and 1, at concurrency 32 (without --mbv2-bundle, a run is trained briefly on the
  shared CelebA 10k and exported once, cached under benchmarks/results/).

Goals: digits c=32 serve >= 0.7x echo; serve-w2 >= 1.6x serve; MobileNetV2 batching >= 3x unbatched;
c=1 p50 overhead <= 0.3 ms over the echo; serve >= KServe at every concurrency (requests/s and p50).
Client and servers share this machine's cores: report the load average with the figures. Writes
benchmarks/results/cloud_benchmark.json and .txt. ``--quick`` (1 s levels, 2 rounds) finishes within
10 minutes including the MobileNetV2 bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privsplit.results import save_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CELEBA = ROOT / ".." / "shared" / "data" / "celeba-10k"
SCHEMA_VERSION = 2
CONCURRENCY = (1, 8, 32)
GOAL_ECHO, GOAL_WORKERS, GOAL_BATCHING, GOAL_C1_OVERHEAD_MS = 0.7, 1.6, 3.0, 0.3


def log(msg: str) -> None:
    print(f"[cloud-bench] {msg}", file=sys.stderr, flush=True)


# ---- the bare echo (a subprocess: --echo-server) -------------------------------------------------------
def echo_server(port: int) -> None:
    """ModelInfer answering the request's own bytes: the sync gRPC server alone."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    ident = lambda b: b  # noqa: E731
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request, ident, ident)
    server = grpc.server(ThreadPoolExecutor(max_workers=128))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


# ---- bundles ------------------------------------------------------------------------------------------
def digits_bundle(path: Path | None) -> Path:
    if path is not None:
        return path
    cached = RESULTS / "cloud_bundle"
    if not (cached / "cloud" / "manifest.json").is_file():
        from privsplit.export import ExportFormat, export_run
        from privsplit.train import TrainConfig, train_run

        log("training a digits run (2 epochs) and exporting its cloud bundle (once)")
        run = train_run(
            "digits", RESULTS / "cloud_run", seed=0, config=TrainConfig.unprotected(epochs=2), progress=False
        )
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


def mbv2_bundle(path: Path | None) -> Path | None:
    """A MobileNetV2 (split after 7 blocks) 96 px cloud bundle: trained 1 epoch on 512 CelebA images (its
    speed does not depend on how well it is trained)."""
    if path is not None:
        return path
    cached = RESULTS / "cloud_mbv2_bundle"
    if not (cached / "cloud" / "manifest.json").is_file():
        if not (CELEBA / "list_attr_celeba.txt").is_file():
            log(f"no CelebA at {CELEBA}: the MobileNetV2 rows are not run (give --mbv2-bundle)")
            return None
        import torch

        from privsplit.export import ExportFormat, export_run
        from privsplit.train import TrainConfig, train_run

        torch.set_num_threads(2)
        log("training a MobileNetV2 96 px run (1 epoch, 512 images) and exporting its cloud bundle (once)")
        # unprotected: a 1-epoch model is near the majority rate, which a protected run reports as a collapse
        config = TrainConfig.unprotected(epochs=1, feature_channels=4, arch="mobilenet-v2", batch_size=64)
        run = train_run(
            f"celeba:{CELEBA}",
            RESULTS / "cloud_mbv2_run",
            task="Smiling",
            private="Male",
            image_size=96,
            limit=512,
            seed=0,
            config=config,
            progress=False,
        )
        export_run(
            run,
            cached,
            formats=(ExportFormat.ONNX_FP32,),
            calibration=64,
            tolerance=0.99,
            holdout_limit=128,
            overwrite=True,
            progress=False,
        )
    return cached / "cloud"


def feature_request(bundle: Path):
    from privsplit.bundle import load_bundle
    from privsplit.proto.wire import features_request

    b = load_bundle(bundle)
    f = b.features
    q = np.random.default_rng(0).integers(-128, 128, size=(1, *f.shape), dtype=np.int16).astype(np.int8)
    return features_request(
        q, encoder_hash=sorted(b.manifest["accepted_encoder_hashes"])[0], scale=f.scale, zero_point=f.zero_point
    )


# ---- targets ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(target: str) -> bool:
    import grpc

    from privsplit.proto.inference import open_inference_grpc_pb2 as pb
    from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready
        except grpc.FutureTimeoutError:
            return False
        except grpc.RpcError as exc:  # the echo has no ServerReady: up is enough
            return exc.code() == grpc.StatusCode.UNIMPLEMENTED


@dataclass
class Target:
    """A server in a subprocess on a loopback port; ``error`` says why it is not there."""

    name: str
    target: str = ""
    proc: subprocess.Popen | None = None
    error: str = ""
    parse: bool = True  # read the replies' server timings (not for the echo)

    @classmethod
    def launch(cls, name: str, args: list[str], port: int, *, parse: bool = True, wait_s: float = 120) -> Target:
        log(f"starting {name}: {' '.join(args)}")
        stderr = open(RESULTS / f"cloud_benchmark.{name}.log", "w")  # noqa: SIM115 (kept open with the process)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT, start_new_session=True)
        target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (RESULTS / f"cloud_benchmark.{name}.log").read_text().strip().splitlines()
                return cls(name, error=f"exited {proc.returncode}: {tail[-1] if tail else 'no output'}"[:300])
            if _ready(target):
                return cls(name, target, proc, parse=parse)
            time.sleep(0.3)
        _stop(proc)
        return cls(name, error=f"not ready within {wait_s:g} s")

    def children(self) -> int:
        """Child processes of the launched server (the --workers processes, where they exist)."""
        if self.proc is None:
            return 0
        tasks = Path(f"/proc/{self.proc.pid}/task")
        return sum(len((t / "children").read_text().split()) for t in tasks.iterdir() if (t / "children").exists())

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the server and its descendant processes."""
        if self.proc is None:
            return 0.0
        total, todo, tick = 0.0, [self.proc.pid], os.sysconf("SC_CLK_TCK")
        while todo:
            pid = todo.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 15)  # the server and any worker processes it started (its own session)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()


def serve_cmd(bundle: Path, port: int, *extra: str, python: str = sys.executable) -> list[str]:
    own = [] if "--engine" in extra else ["--reply-load"]  # queue_us / batch_size in replies: the table reads them
    return [python, "-m", "privsplit.cli.main", "serve", str(bundle), "--port", str(port), *own, *extra]


def start_targets(args, digits: Path, mbv2: Path | None) -> dict[str, Target]:
    targets: dict[str, Target] = {}
    port = free_port()
    targets["echo"] = Target.launch("echo", [sys.executable, __file__, "--echo-server", str(port)], port, parse=False)
    port = free_port()
    targets["serve"] = Target.launch("serve", serve_cmd(digits, port), port)
    port = free_port()
    w2 = Target.launch("serve-w2", serve_cmd(digits, port, "--workers", "2"), port)
    if w2.proc is not None and w2.children() == 0:
        w2.stop()
        w2 = Target("serve-w2", error="unavailable: --workers sets gRPC threads on this branch, not processes")
    targets["serve-w2"] = w2
    port = free_port()
    targets["kserve"] = Target.launch(
        "kserve", serve_cmd(digits, port, "--engine", "kserve", python=args.kserve_python), port
    )
    if targets["kserve"].error:
        targets["kserve"].error = "unavailable: " + targets["kserve"].error
    binary = shutil.which("tritonserver")
    if binary is None:
        targets["triton"] = Target("triton", error="not run: no tritonserver binary on this machine")
    elif args.triton_repo is None:
        targets["triton"] = Target("triton", error="not run: give --triton-repo (privsplit export ... --triton)")
    else:
        port = free_port()
        cmd = [
            binary,
            f"--model-repository={args.triton_repo}",
            f"--grpc-port={port}",
            "--allow-http=false",
            "--allow-metrics=false",
        ]
        targets["triton"] = Target.launch("triton", cmd, port)
    if mbv2 is None:
        for name in ("mbv2-batched", "mbv2-unbatched"):
            targets[name] = Target(name, error="not run: no MobileNetV2 bundle (no CelebA, no --mbv2-bundle)")
    else:
        for name, max_batch in (("mbv2-batched", 64), ("mbv2-unbatched", 1)):
            port = free_port()
            targets[name] = Target.launch(name, serve_cmd(mbv2, port, "--max-batch", str(max_batch)), port)
    for t in targets.values():
        log(f"{t.name}: {t.target or t.error}")
    return targets


# ---- measuring ----------------------------------------------------------------------------------------
def measure(target: Target, request, concurrency: int, duration: float) -> dict:
    from privsplit.cloud.loadgen import LoadSpec, run_load

    spec = LoadSpec(
        target=target.target,
        concurrency=(concurrency,),
        duration_s=duration,
        warmup_s=min(1.0, duration / 2),
        parse_replies=target.parse,
    )
    cpu, client = target.cpu_s(), time.process_time()
    p = run_load(spec, request).points[0]
    cpu = target.cpu_s() - cpu  # over warm-up and measurement: per request at the measured rate
    client = time.process_time() - client  # the load probe runs in this process (its gRPC threads included)
    served = p.throughput * (spec.warmup_s + spec.duration_s)
    return {
        "req_per_s": p.throughput,
        "p50_ms": p.p50_ms,
        "p99_ms": p.p99_ms,
        "requests": p.requests,
        "errors": p.errors,
        "error_codes": p.error_codes,
        "batch_mean": p.batch_size_mean,
        "server_compute_us_p50": p.server_compute_us_p50,
        "server_cpu_us_per_req": cpu / served * 1e6 if served else float("nan"),
        "client_cpu_us_per_req": client / served * 1e6 if served else float("nan"),
    }


def median_of(rounds: list[dict]) -> dict:
    out = {
        k: statistics.median(r[k] for r in rounds)
        for k in (
            "req_per_s",
            "p50_ms",
            "p99_ms",
            "batch_mean",
            "server_compute_us_p50",
            "server_cpu_us_per_req",
            "client_cpu_us_per_req",
        )
    }
    out["errors"] = sum(r["errors"] for r in rounds)
    out["requests"] = sum(r["requests"] for r in rounds)
    out["rounds"] = [{k: r[k] for k in ("req_per_s", "p50_ms", "p99_ms", "errors")} for r in rounds]
    return out


def run_rounds(plan: list[tuple[Target, object, int]], rounds: int, duration: float) -> dict:
    """Every (target, request, concurrency) once per round, rounds interleaved (drift hits all alike)."""
    samples: dict[tuple[str, int], list[dict]] = {}
    for r in range(rounds):
        for target, request, c in plan:
            m = measure(target, request, c, duration)
            samples.setdefault((target.name, c), []).append(m)
            log(
                f"round {r + 1}/{rounds} {target.name} c={c}: {m['req_per_s']:.0f} req/s, p50 {m['p50_ms']:.3f} ms, "
                f"p99 {m['p99_ms']:.3f} ms, {m['errors']} errors"
            )
    return {key: median_of(s) for key, s in samples.items()}


def model_batching(bundle: Path, seconds: float = 3.0) -> dict:
    """The model's own rows/s at batch 1 and 32 (onnxruntime in this process, CPU time): the most that
    batching can gain in compute."""
    from privsplit.cloud.model_host import ModelHost

    host = ModelHost.open(bundle, name="privsplit")
    out = {}
    for b in (1, 32):
        x = np.random.default_rng(0).standard_normal((b, *host.spec.feature_shape)).astype(np.float32)
        host.infer(x)
        times, stop = [], time.monotonic() + seconds / 2
        while time.monotonic() < stop or len(times) < 5:
            t = time.process_time()
            host.infer(x)
            times.append(time.process_time() - t)
        out[f"cpu_ms_batch{b}"] = statistics.median(times) * 1e3
    out["rows_per_s_batch32_over_batch1"] = round(32 * out["cpu_ms_batch1"] / out["cpu_ms_batch32"], 3)
    log(f"model alone: {out}")
    return out


# ---- goals and table ----------------------------------------------------------------------------------
def _goal(value: float | None, goal: str, ok: Callable[[float], bool], **extra) -> dict:
    if value is None or value != value:
        return {"value": None, "goal": goal, "status": "not run", **extra}
    return {"value": round(value, 4), "goal": goal, "status": "PASS" if ok(value) else "MISS", **extra}


def goals(
    results: dict, errors: dict[str, str], ort_batching: float | None = None, cores: int = 1, model_row_us: float = 0.0
) -> dict:
    """Each goal's ratio, PASS / MISS, and what bounds it here: the model's own batching gain (MobileNetV2) and
    the CPU ceilings (client and servers share ``cores``; a request costs client + server CPU, so at most
    ``cores / (client + server)`` requests per second can be served, whatever the server does). A server that
    added nothing to the echo's transport but the model's own CPU per row (``model_row_us``, at batch 32) would
    reach ``echo_ceiling`` times the echo: the most the echo goal can be."""

    def get(name, c, key="req_per_s"):
        m = results.get(name, {}).get(str(c))
        return None if m is None or name in errors else m[key]

    def ratio(a, b):
        return None if a is None or b is None or not b else a / b

    def cpu_ceiling(name):  # req/s the machine's cores allow at the measured client + server CPU per request
        client, server = get(name, 32, "client_cpu_us_per_req"), get(name, 32, "server_cpu_us_per_req")
        return None if client is None or server is None else cores * 1e6 / (client + server)

    echo32, echo_cpu32 = get("echo", 32), get("echo", 32, "server_cpu_us_per_req")
    client32 = get("serve", 32, "client_cpu_us_per_req")
    out = {
        "serve_vs_echo_c32": _goal(
            ratio(get("serve", 32), get("echo", 32)),
            f">= {GOAL_ECHO}",
            lambda v: v >= GOAL_ECHO,
            # the server CPU per request at which the goal's rate would use every core with this client
            server_cpu_us_goal_allows=None
            if echo32 is None or client32 is None
            else round(cores * 1e6 / (GOAL_ECHO * echo32) - client32),
            server_cpu_us_measured=get("serve", 32, "server_cpu_us_per_req"),
            model_cpu_us_per_row=round(model_row_us),
            echo_ceiling=None
            if echo32 is None or client32 is None or echo_cpu32 is None
            else round(cores * 1e6 / (client32 + echo_cpu32 + model_row_us) / echo32, 3),
        ),
        "workers2_vs_serve_c32": _goal(
            ratio(get("serve-w2", 32), get("serve", 32)),
            f">= {GOAL_WORKERS}",
            lambda v: v >= GOAL_WORKERS,
            cpu_ceiling=ratio(cpu_ceiling("serve-w2"), get("serve", 32)),  # the most the cores allow
        ),
        "mbv2_batched_vs_unbatched_c32": _goal(
            ratio(get("mbv2-batched", 32), get("mbv2-unbatched", 32)),
            f">= {GOAL_BATCHING}",
            lambda v: v >= GOAL_BATCHING,
            model_rows_per_s_batch32_over_batch1=ort_batching,  # what batching can gain in compute at best
        ),
    }
    over = None if get("serve", 1, "p50_ms") is None else get("serve", 1, "p50_ms") - get("echo", 1, "p50_ms")
    compute = get("serve", 1, "server_compute_us_p50")
    out["c1_p50_overhead_ms"] = _goal(
        over,
        f"<= {GOAL_C1_OVERHEAD_MS} ms",
        lambda v: v <= GOAL_C1_OVERHEAD_MS,
        without_model_compute_ms=None if over is None or compute is None else round(over - compute / 1e3, 4),
    )
    for c in CONCURRENCY:
        rps, p50 = (
            ratio(get("serve", c), get("kserve", c)),
            ratio(get("kserve", c, "p50_ms"), get("serve", c, "p50_ms")),
        )
        value = None if rps is None else min(rps, p50)
        out[f"serve_vs_kserve_c{c}"] = _goal(
            value, ">= 1 (req/s and p50)", lambda v: v >= 1.0, req_per_s_ratio=rps, p50_ratio_kserve_over_serve=p50
        )
    return out


def table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"cloud benchmark: {m['cpus']} CPUs shared by client and servers; load average {m['loadavg_start'][0]:.1f} "
        f"at start, {m['loadavg_end'][0]:.1f} at end; {report['rounds']} rounds of {report['duration_s']:g} s "
        f"per level, medians",
        "",
        f"{'target':<15}"
        + "".join(f"{f'c={c} req/s':>12}{'p50 ms':>8}{'p99 ms':>8}" for c in CONCURRENCY)
        + f"{'x echo@32':>10}{'cpu us/req@32':>14}{'client us/req':>14}{'errors':>8}",
    ]
    echo32 = report["results"].get("echo", {}).get("32", {}).get("req_per_s")
    for name, why in report["targets"].items():
        res = report["results"].get(name)
        if not res:
            lines.append(f"{name:<15}{why}")
            continue
        row = f"{name:<15}"
        for c in CONCURRENCY:
            r = res.get(str(c))
            row += (
                f"{r['req_per_s']:>12.0f}{r['p50_ms']:>8.3f}{r['p99_ms']:>8.3f}" if r else f"{'-':>12}{'-':>8}{'-':>8}"
            )
        r32 = res.get("32")
        row += f"{r32['req_per_s'] / echo32:>10.2f}" if r32 and echo32 and not name.startswith("mbv2") else f"{'':>10}"
        row += f"{r32['server_cpu_us_per_req']:>14.0f}" if r32 else f"{'':>14}"
        row += f"{r32['client_cpu_us_per_req']:>14.0f}" if r32 and "client_cpu_us_per_req" in r32 else f"{'':>14}"
        row += f"{sum(r['errors'] for r in res.values()):>8}"
        lines.append(row)
    lines += ["", "goals:"]
    for name, g in report["goals"].items():
        extra = {k: v for k, v in g.items() if k not in ("value", "goal", "status")}
        lines.append(
            f"  {g['status']:<8}{name:<32}{g['value']!s:>10}  goal {g['goal']}" + (f"  {extra}" if extra else "")
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="1 s levels, 2 rounds (about 5 minutes with bundles cached)")
    ap.add_argument("--duration", type=float, help="seconds per level and round (default 3; --quick 1)")
    ap.add_argument("--rounds", type=int, help="rounds, interleaved; the table gives medians (default 3; --quick 2)")
    ap.add_argument("--bundle", type=Path, help="digits cloud bundle (default: train + export one once)")
    ap.add_argument("--mbv2-bundle", type=Path, help="MobileNetV2 96 px cloud bundle (default: train + export once)")
    ap.add_argument("--kserve-python", default=sys.executable, help="interpreter with privsplit[kserve]")
    ap.add_argument("--triton-repo", type=Path, help="Triton model repository (privsplit export ... --triton)")
    ap.add_argument("--out", type=Path, default=RESULTS / "cloud_benchmark.json")
    args = ap.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return 0
    duration = args.duration or (1.0 if args.quick else 3.0)
    rounds = args.rounds or (2 if args.quick else 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    digits, mbv2 = digits_bundle(args.bundle), mbv2_bundle(args.mbv2_bundle)
    report: dict = {
        "schema_version": SCHEMA_VERSION,
        "rounds": rounds,
        "duration_s": duration,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
    }
    targets = start_targets(args, digits, mbv2)
    try:
        request = feature_request(digits)
        plan = [
            (t, request, c)
            for name, t in targets.items()
            if not name.startswith("mbv2") and not t.error
            for c in CONCURRENCY
        ]
        if mbv2 is not None:
            mrequest = feature_request(mbv2)
            plan += [(targets[n], mrequest, 32) for n in ("mbv2-batched", "mbv2-unbatched") if not targets[n].error]
        medians = run_rounds(plan, rounds, duration)
    finally:
        for t in targets.values():
            t.stop()
    report["targets"] = {name: t.error or t.target for name, t in targets.items()}
    report["results"] = {}
    for (name, c), m in medians.items():
        report["results"].setdefault(name, {})[str(c)] = m
    errors = {name: t.error for name, t in targets.items() if t.error}
    report["model_batching"] = None if mbv2 is None else model_batching(mbv2)
    report["digits_model"] = model_batching(digits)  # its CPU per row: part of any server's cost per request
    ort_gain = None if mbv2 is None else report["model_batching"]["rows_per_s_batch32_over_batch1"]
    row_us = 1e3 * report["digits_model"]["cpu_ms_batch32"] / 32
    report["goals"] = goals(report["results"], errors, ort_gain, cores=os.cpu_count() or 1, model_row_us=row_us)
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["seconds"] = round(time.monotonic() - started, 1)
    save_json(args.out, report)
    text = table(report)
    args.out.with_suffix(".txt").write_text(text)
    print(json.dumps(report, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
