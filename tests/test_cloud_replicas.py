"""Replicas: two `privsplit serve` processes behind the round_robin client (one SIGKILLed in the middle of
a 2,000-request run: every request gets exactly one answer), `privsplit bench cloud` over a list of
targets, and `privsplit serve --workers 2`: two processes on one port, supervised."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector  # imported before any test sets its folder
from test_cloud_cli import Served, _cli, _wait_for
from test_cloud_support import REPO, wire_features

from privsplit.edge.client import ClientConfig, EdgeClient, RetryPolicy
from privsplit.proto import InferResponse, Prediction, features_request
from privsplit.proto.channel import DialConfig, dial
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc
from privsplit.proto.status import ProtocolError

pytestmark = pytest.mark.slow  # the session's bundles: training + export (~1 min)

REQUESTS = 2000
KILL_AFTER = 700  # answered requests before one replica is killed


@pytest.fixture(scope="module")
def wire(bundles, digits_run):
    return wire_features(bundles, digits_run, count=64)


def _metrics_url(served: Served, worker: int | None = None) -> str:
    """The metrics address the server (or worker) logs (just after its "listening on" line)."""

    def find() -> str | None:
        for line in list(served.lines):
            if worker is None or f"worker {worker} " in line:
                found = re.search(r"metrics on (http://\S+/metrics)", line)
                if found:
                    return found.group(1)
        return None

    _wait_for(lambda: find() is not None, f"the metrics address of {served.proc.args[3:]}", timeout=30)
    return str(find())


def _successes(url: str) -> int:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return int(float(re.search(r"^nv_inference_request_success\{[^}]*\} (\S+)$", text, re.M).group(1)))


def _worker_successes(folder: Path, pid: int) -> int:
    """One worker's own count, read from the files it wrote to the multiprocess folder (prometheus_client's merge)."""
    files = [str(f) for f in folder.glob(f"*_{pid}.db")]
    for family in MultiProcessCollector.merge(files):
        if family.name == "nv_inference_request_success":
            return int(sum(s.value for s in family.samples if s.name.endswith("_total")))
    return 0


def _replica(bundles) -> Served:
    args = ("serve", bundles.cloud, "--port", 0, "--trust-key", bundles.trust_key, "--metrics-port", 0)
    return Served(_cli(*args, "--grace", 5))


def test_two_replicas_one_killed_mid_run_every_request_answered_once(bundles, wire, tmp_path):
    replicas = [_replica(bundles), _replica(bundles)]
    urls = [_metrics_url(r) for r in replicas]
    target = ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    try:
        # the load probe balances over the list: both replicas get calls, none fails
        bench = subprocess.run(
            _cli(
                *("bench", "cloud", "--target", target, "--bundle", bundles.cloud),
                *("--concurrency", "4", "--duration", 0.5, "--warmup", 0.1, "--json", tmp_path / "bench.json"),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert bench.returncode == 0, bench.stderr
        assert min(_successes(u) for u in urls) > 10, "round_robin left a replica idle"

        payloads = {}
        for i in range(REQUESTS):
            request = features_request(
                wire.features[i % 64 : i % 64 + 1],
                encoder_hash=wire.encoder_hash,
                scale=wire.scale,
                zero_point=wire.zero_point,
                request_id=f"r{i}",
            )
            payloads[f"r{i}"] = request.to_proto().SerializeToString()
        retry = RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.5)
        config = ClientConfig(target=target, retry=retry, timeout_s=20.0, seed=0)
        with EdgeClient(config) as client:
            expected = {i: client.infer_payload(payloads[f"r{i}"]) for i in range(64)}
            before = [_successes(u) for u in urls]
            outcomes: dict[str, list] = {rid: [] for rid in payloads}
            answered, lock, killed = [0], threading.Lock(), threading.Event()
            at_kill = {}

            def one(rid: str) -> None:
                try:
                    outcome: object = client.infer_response(payloads[rid])
                except ProtocolError as exc:  # an explicit error is an outcome too (counted, must not happen)
                    outcome = exc
                with lock:
                    outcomes[rid].append(outcome)
                    answered[0] += 1
                    if answered[0] == KILL_AFTER:
                        at_kill["victim"] = _successes(urls[1]) - before[1]
                        replicas[1].proc.kill()  # SIGKILL: requests in flight there are cut off
                        at_kill["retries"] = client.retries
                        killed.set()

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(one, payloads))
            assert killed.is_set()
            retries_after_kill = client.retries - at_kill["retries"]
        assert replicas[1].proc.wait(10) == -signal.SIGKILL

        # exactly one outcome per request, every one an answer (none lost, none twice), each its own and right
        assert sorted(outcomes) == sorted(payloads) and all(len(o) == 1 for o in outcomes.values())
        errors = [o[0] for o in outcomes.values() if isinstance(o[0], Exception)]
        assert errors == [], errors[:3]
        for rid, (reply,) in outcomes.items():  # either replica, first try or retry: the same answer
            assert reply.id == rid
            got, want = Prediction.from_response(reply), expected[int(rid[1:]) % 64]
            assert got.label[0] == want.label[0]  # probabilities: to float rounding (batches of other sizes)
            np.testing.assert_allclose(got.probs, want.probs, rtol=0, atol=1e-6)
        survivor = _successes(urls[0]) - before[0]
        assert at_kill["victim"] > 50 and survivor >= REQUESTS - at_kill["victim"] - 8  # 8 = in flight at most
        assert retries_after_kill >= 1, "no call was cut off by the kill: the retry path was not exercised"
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
    assert replicas[0].finish() == 0, "".join(replicas[0].lines)


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes of TCP sockets listening on ``port`` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        found = re.match(r"socket:\[(\d+)\]", link)
        if found:
            inodes.add(found.group(1))
    return inodes


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_serve_workers_share_one_port_restart_and_stop_cleanly(bundles, wire, tmp_path, monkeypatch):
    metrics_dir = tmp_path / "metrics"  # the user's PROMETHEUS_MULTIPROC_DIR: the test reads each worker's files
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    served = Served(_cli("serve", bundles.cloud, "--port", 0, "--workers", 2, "--metrics-port", 0, "--grace", 5))
    try:
        _wait_for(lambda: any("with 2 worker processes" in line for line in served.lines), "the supervisor's line")
        line = next(line for line in served.lines if "with 2 worker processes" in line)
        assert f"listening on 127.0.0.1:{served.port} " in line
        pids = [int(p) for p in re.search(r"pids (\d+), (\d+);", line).groups()]
        assert len(set(pids)) == 2 and served.proc.pid not in pids
        listening = _listening_inodes(served.port)
        for pid in pids:  # two processes, children of the command, each listening on the one port
            assert _ppid(pid) == served.proc.pid
            assert _socket_inodes(pid) & listening, f"worker {pid} does not listen on {served.port}"
        assert not _socket_inodes(served.proc.pid) & listening  # the supervisor let go of its reservation

        request = features_request(
            wire.features[:1], encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point
        ).to_proto()
        url = _metrics_url(served)  # the supervisor's one endpoint
        assert "(the sum over all workers)" in "".join(served.lines)

        def on_new_connection(n: int) -> list[int]:
            labels = []
            for _ in range(n):  # a new channel is a new connection: the kernel picks a worker for each
                with dial(DialConfig(target=f"127.0.0.1:{served.port}")) as channel:
                    reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
                labels.append(int(Prediction.from_response(InferResponse.from_proto(reply)).label[0]))
            return labels

        labels = on_new_connection(32)
        counts = [_worker_successes(metrics_dir, pid) for pid in pids]
        assert sum(counts) == 32 and min(counts) > 0, counts  # both processes served (P(all on one) = 2**-31)
        assert _successes(url) == 32  # one scrape: the sum of both workers
        assert len(set(labels)) == 1  # the same features: the same answer from either process

        # the load probe's --connections are distinct TCP connections, spread over both processes
        bench = subprocess.run(
            _cli(
                *("bench", "cloud", "--target", f"127.0.0.1:{served.port}", "--bundle", bundles.cloud),
                *("--concurrency", "16", "--connections", "16", "--duration", 0.5, "--warmup", 0.1),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert bench.returncode == 0, bench.stderr
        grown = [_worker_successes(metrics_dir, pid) - c for pid, c in zip(pids, counts)]
        assert min(grown) > 10, grown
        assert _successes(url) == sum(_worker_successes(metrics_dir, pid) for pid in pids)

        # a worker that dies is restarted on the same port
        os.kill(pids[0], signal.SIGKILL)
        _wait_for(lambda: any("worker 0 restarted" in line for line in served.lines), "worker 0 to restart")
        log = "".join(served.lines)
        assert f"worker 0 (pid {pids[0]}) died (killed by SIGKILL); restarting it" in log
        new_pid = int(re.search(r"worker 0 restarted \(pid (\d+)\)", log).group(1))
        assert new_pid not in pids and _socket_inodes(new_pid) & _listening_inodes(served.port)
        assert on_new_connection(8) == labels[:8]
    finally:
        served.proc.send_signal(signal.SIGTERM)
    assert served.finish() == 0, "".join(served.lines)
    log = "".join(served.lines)
    assert "SIGTERM: draining 2 workers" in log and "all workers drained; bye" in log
    for pid in (pids[1], new_pid):
        assert f"(pid {pid}): drained; bye" in log
        assert not Path(f"/proc/{pid}").exists()


def test_serve_workers_refuse_a_taken_port_and_bad_counts(bundles):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            _cli("serve", bundles.cloud, "--port", port, "--workers", 2),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
    proc = subprocess.run(
        _cli("serve", bundles.cloud, "--workers", 65), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 2 and "--workers (server processes) must be in 1..64, got 65" in proc.stderr
    # a worker's start-up error is the command's one line (not one per worker)
    proc = subprocess.run(
        _cli("serve", bundles.cloud, "--port", 0, "--workers", 2, "--trust-key", bundles.other_key),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("privsplit serve: error: ")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_drain_and_exit_when_the_supervisor_is_killed(bundles):
    served = Served(_cli("serve", bundles.cloud, "--port", 0, "--workers", 2, "--grace", 1))
    _wait_for(lambda: any("with 2 worker processes" in line for line in served.lines), "the supervisor's line")
    line = next(line for line in served.lines if "with 2 worker processes" in line)
    pids = [int(p) for p in re.search(r"pids (\d+), (\d+);", line).groups()]
    served.proc.kill()  # SIGKILL: nothing forwards a signal; the workers notice their parent is gone
    assert served.finish() == -signal.SIGKILL
    _wait_for(lambda: not any(_running(pid) for pid in pids), "the orphaned workers to exit", timeout=20)
    drained = [f"(pid {pid}): drained; bye" for pid in pids]
    _wait_for(lambda: all(d in "".join(served.lines) for d in drained), "each worker's drain line", timeout=10)
