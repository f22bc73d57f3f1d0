"""``privsplit serve --workers N``: N server processes on one port (SO_REUSEPORT), run by a supervisor.

One Python process runs the model and the gRPC handlers under one GIL; N processes use N cores. Each
worker is a full :func:`~privsplit.cloud.server.serve` (its own model session, batcher, health service
and metrics) bound to the same port with ``grpc.so_reuseport``; the kernel spreads incoming
*connections* over them (a client's channel stays on one worker; balancing is per connection).

The supervisor (the ``privsplit serve`` process itself):

* picks the port first (``--port 0``: a free one) and holds it with a bound, non-listening SO_REUSEPORT
  socket while the workers start, so every worker binds the same port and no other program takes it;
* starts the workers (``python -m privsplit.cloud.workers K``, the config as JSON on stdin: the token
  never appears on a command line) and waits for each to report, as one JSON line on its stdout, that
  it serves; a worker that fails to start stops them all and its one-line error is raised here;
* forwards SIGTERM / SIGINT to every worker as SIGTERM (each drains within ``--grace``), waits for them
  (``--grace`` + :data:`KILL_MARGIN_S`, then SIGKILL) and exits 0 when every worker drained cleanly;
* restarts a worker that dies (logged with its exit status), unless :data:`MAX_RESTARTS` happened within
  :data:`RESTART_WINDOW_S` (a crash loop): then it stops the others and exits 1.

Workers log to the same stderr with their index and pid. Health is per worker: a health check is answered
by the worker its connection landed on. Metrics are one endpoint: with ``--metrics-port P`` the supervisor
serves ``/metrics`` on P, the sum over every worker (prometheus_client's multiprocess mode; each worker
writes its counts to the folder in ``PROMETHEUS_MULTIPROC_DIR``, which the supervisor prepares). Workers run
in their own session (a terminal's Ctrl-C reaches only the supervisor, which forwards it) and stop if the
supervisor dies.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace

from privsplit import errors
from privsplit.cloud.config import ServeConfig
from privsplit.errors import ConfigError, PrivsplitError
from privsplit.results import from_dict, to_dict

START_TIMEOUT_S = 120.0  # a worker that does not serve within this is killed (model load included)
KILL_MARGIN_S = 10.0  # after --grace, workers still running are killed
RESTART_WINDOW_S = 60.0
MAX_RESTARTS = 5  # restarts within RESTART_WINDOW_S before the supervisor gives up
PARENT_POLL_S = 0.5


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker reports once it serves."""

    index: int
    pid: int
    port: int
    metrics_port: int | None = None


class _Worker:
    """One worker process and the reader of its report line."""

    def __init__(self, index: int, config: ServeConfig, *, env: dict[str, str] | None = None) -> None:
        self.index = index
        self.info: WorkerInfo | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "privsplit.cloud.workers", str(index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=f"privsplit-worker-{index}").start()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(to_dict(config)))
            self.proc.stdin.close()
        except BrokenPipeError:  # it died at once; await_ready reports how
            pass

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def await_ready(self, abort: threading.Event, timeout: float = START_TIMEOUT_S) -> WorkerInfo | None:
        """The worker's report once it serves; None if ``abort`` was set first; raises if it failed."""
        deadline = time.monotonic() + timeout
        while not abort.is_set():
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    self.proc.kill()
                    raise PrivsplitError(f"worker {self.index} did not start serving within {timeout:g} s") from None
                continue
            if line is None:
                code = self.proc.wait()
                raise PrivsplitError(f"worker {self.index} exited ({describe_exit(code)}) before serving")
            msg = json.loads(line)
            if "error" in msg:
                self.proc.wait()
                kind = getattr(errors, str(msg.get("kind")), None)
                cls = kind if isinstance(kind, type) and issubclass(kind, PrivsplitError) else PrivsplitError
                raise cls(msg["error"])
            self.info = from_dict(WorkerInfo, msg)
            return self.info
        return None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) SO_REUSEPORT socket on ``host:port`` and its port (0: a free one)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers > 1 needs SO_REUSEPORT (Linux); run one process per port instead")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror} (port in use, or a bad --host)") from None
    return sock, int(sock.getsockname()[1])


def _offset_port(base: int | None, index: int, flag: str) -> int | None:
    """Worker ``index``'s own port for a per-worker listener (metrics, health): ``base + index``."""
    if not base:
        return base
    if base + index > 65535:
        raise ConfigError(f"{flag} {base} + {index} (worker {index}) is beyond 65535")
    return base + index


def worker_config(config: ServeConfig, index: int, port: int) -> ServeConfig:
    """Worker ``index``: the shared port and its own health port (``--health-port P`` -> P + index); no metrics
    port (the supervisor serves every worker's metrics on ``--metrics-port``)."""
    return replace(
        config,
        port=port,
        workers=1,
        reuse_port=True,
        metrics_port=None,
        health_port=_offset_port(config.health_port, index, "--health-port"),
    )


def _stop_all(workers: dict[int, _Worker], grace: float, log) -> bool:
    """SIGTERM every worker, wait ``grace`` + margin, then SIGKILL; True when all exited 0."""
    for w in workers.values():
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace + KILL_MARGIN_S
    clean = True
    for w in workers.values():
        try:
            code = w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            code = w.proc.wait()
            log(f"worker {w.index} (pid {w.proc.pid}) did not stop within {grace + KILL_MARGIN_S:g} s: killed")
        clean = clean and code == 0
    return clean


def supervise(config: ServeConfig, *, log=None) -> int:
    """Run ``config.workers`` worker processes on one port until SIGTERM / SIGINT; 0 when all drained."""
    from privsplit.cloud.logs import logger

    warn = log or logger.warning
    log = log or logger.info
    reservation, port = reserve_port(config.host, config.port)
    stop, received = threading.Event(), []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: dict[int, _Worker] = {}
    failed = False
    metrics_dir, httpd, env = None, None, None
    try:
        configs = [worker_config(config, k, port) for k in range(config.workers)]
        if config.metrics_port is not None:  # one /metrics: every worker writes to metrics_dir, we add them up
            from privsplit.cloud.metrics import MULTIPROC_ENV, multiprocess_dir, serve_multiprocess

            metrics_dir = multiprocess_dir()
            env = {MULTIPROC_ENV: str(metrics_dir)}
            httpd, metrics_port = serve_multiprocess(metrics_dir, config.host, config.metrics_port)
        for k, worker_cfg in enumerate(configs):  # all load their model at once
            workers[k] = _Worker(k, worker_cfg, env=env)
        for w in workers.values():
            w.await_ready(stop)
        reservation.close()
        if not stop.is_set():
            pids = ", ".join(str(w.proc.pid) for w in workers.values())
            log(
                f"listening on {config.host}:{port} with {config.workers} worker processes (pids {pids}; "
                "SO_REUSEPORT spreads connections over them)"
            )
            if httpd is not None:
                log(f"metrics on http://{config.host}:{metrics_port}/metrics (the sum over all workers)")
        restarts: collections.deque[float] = collections.deque()
        while not stop.wait(0.2):
            for k, w in list(workers.items()):
                code = w.proc.poll()
                if code is None:
                    continue
                now = time.monotonic()
                restarts.append(now)
                while now - restarts[0] > RESTART_WINDOW_S:
                    restarts.popleft()
                what = f"worker {k} (pid {w.proc.pid}) died ({describe_exit(code)})"
                if metrics_dir is not None:
                    from privsplit.cloud.metrics import worker_gone

                    worker_gone(metrics_dir, w.proc.pid)
                if len(restarts) > MAX_RESTARTS:
                    warn(f"{what}; {MAX_RESTARTS} restarts within {RESTART_WINDOW_S:g} s: stopping")
                    failed = True
                    stop.set()
                    break
                warn(f"{what}; restarting it")
                workers[k] = _Worker(k, configs[k], env=env)
                try:
                    info = workers[k].await_ready(stop)
                except PrivsplitError as exc:
                    warn(f"worker {k} did not restart: {exc}; stopping")
                    failed = True
                    stop.set()
                    break
                if info is not None:
                    log(f"worker {k} restarted (pid {info.pid})")
        if received:
            log(f"{received[0]}: draining {len(workers)} workers (up to {config.grace_s:g} s for in-flight requests)")
    finally:
        reservation.close()
        clean = _stop_all(workers, config.grace_s, warn)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if metrics_dir is not None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # our temporary folder
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)
    if failed or not clean:
        return 1
    log("all workers drained; bye")
    return 0


# ---- the worker process ---------------------------------------------------------------------------
def _watch_parent(parent: int) -> None:
    """Drain (SIGTERM to itself) once the supervisor is gone: a worker never outlives it."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(index: int) -> int:
    from privsplit.cloud.server import serve
    from privsplit.quiet import silence_startup_noise

    silence_startup_noise()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    from privsplit.cloud.logs import logger, setup_logging

    setup_logging(worker=index)  # the supervisor's --log-format and --log-level, from the environment
    log = logger.info

    serving: list[WorkerInfo] = []

    def report(server) -> None:
        info = WorkerInfo(index=index, pid=os.getpid(), port=server.port, metrics_port=server.metrics_port)
        serving.append(info)
        print(json.dumps(to_dict(info)), flush=True)

    try:
        config = from_dict(ServeConfig, json.loads(sys.stdin.read()))
        return serve(config, log=log, on_ready=report)
    except PrivsplitError as exc:
        if serving:  # the supervisor no longer reads the reports: say it here
            logger.error(str(exc))
        else:  # the supervisor raises it (one line from the command, not one per worker)
            print(json.dumps({"error": str(exc), "kind": type(exc).__name__}), flush=True)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover - run as a worker by supervise()
    sys.exit(_worker_main(int(sys.argv[1])))
