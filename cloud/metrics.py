"""Prometheus metrics of the server, served as text on ``--metrics-port`` (``GET /metrics``).

Triton's counters, under Triton's exact names (cumulative; durations in microseconds), so dashboards
made for Triton read them: ``nv_inference_request_success``, ``nv_inference_request_failure`` (label
``reason`` = status code), ``nv_inference_count`` (inferences = rows), ``nv_inference_exec_count``
(model executions = batches), ``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
``nv_inference_compute_infer_duration_us``. Distributions (prometheus_client histograms) for
percentiles: ``privsplit_request_duration_seconds``, ``privsplit_queue_duration_seconds``,
``privsplit_compute_duration_seconds``, ``privsplit_batch_size``; gauges ``privsplit_queue_depth``,
``privsplit_ready``. Every series carries ``model`` and ``version`` labels.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from privsplit.errors import ConfigError, require

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TRITON_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": "Number of model executions performed",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """The server's metrics; every method is cheap and thread-safe."""

    def __init__(self, *, model: str, version: str) -> None:
        prom = require("prometheus_client", package="prometheus-client", extra="cloud")
        self._prom = prom
        self._labels = {"model": model, "version": version}
        # success/failure run on up to --workers gRPC threads at once, batch on the model thread:
        # `dict[k] += 1` is a read-modify-write that loses counts between threads, so one lock guards them.
        self._lock = threading.Lock()
        self._c = dict.fromkeys(TRITON_COUNTERS, 0)
        del self._c["nv_inference_request_failure"]
        self._failures: dict[str, int] = {}
        self.registry = prom.CollectorRegistry(auto_describe=True)
        labels, lv, r = ("model", "version"), self._labels, self.registry

        def histogram(name, doc, buckets):
            return prom.Histogram(name, doc, labels, buckets=buckets, registry=r).labels(**lv)

        self._request_h = histogram(
            "privsplit_request_duration_seconds", "Request duration in the server", _LATENCY_BUCKETS
        )
        self._queue_h = histogram("privsplit_queue_duration_seconds", "Queue wait per request", _LATENCY_BUCKETS)
        self._compute_h = histogram("privsplit_compute_duration_seconds", "Model compute per batch", _LATENCY_BUCKETS)
        self._batch_h = histogram("privsplit_batch_size", "Rows per model execution", _BATCH_BUCKETS)
        self._depth = prom.Gauge("privsplit_queue_depth", "Requests waiting for the model", labels, registry=r).labels(
            **lv
        )
        self._ready = prom.Gauge(
            "privsplit_ready", "1 when serving, 0 while starting or draining", labels, registry=r
        ).labels(**lv)

    def success(self, *, request_us: int, queue_us: int, rows: int) -> None:
        c = self._c
        with self._lock:
            c["nv_inference_request_success"] += 1
            c["nv_inference_count"] += rows
            c["nv_inference_request_duration_us"] += request_us
            c["nv_inference_queue_duration_us"] += queue_us
        self._request_h.observe(request_us / 1e6)
        self._queue_h.observe(queue_us / 1e6)

    def failure(self, reason: str) -> None:
        with self._lock:
            self._failures[reason] = self._failures.get(reason, 0) + 1

    def batch(self, *, rows: int, compute_us: int) -> None:
        c = self._c
        with self._lock:
            c["nv_inference_exec_count"] += 1
            c["nv_inference_compute_infer_duration_us"] += compute_us
        self._compute_h.observe(compute_us / 1e6)
        self._batch_h.observe(rows)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def counter(self, name: str, reason: str | None = None) -> int:
        """The current value of a Triton counter (failures: of one ``reason``, or all)."""
        with self._lock:
            if name == "nv_inference_request_failure":
                return self._failures.get(reason, 0) if reason is not None else sum(self._failures.values())
            return self._c[name]

    def text(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        base = ",".join(f'{k}="{_escape(v)}"' for k, v in self._labels.items())
        with self._lock:
            values = dict(self._c)
            failures = sorted(self._failures.items())
        lines = []
        for name, doc in TRITON_COUNTERS.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
            if name == "nv_inference_request_failure":
                lines += [f'{name}{{{base},reason="{_escape(reason)}"}} {count}' for reason, count in failures]
            else:
                lines.append(f"{name}{{{base}}} {values[name]}")
        return ("\n".join(lines) + "\n").encode() + self._prom.generate_latest(self.registry)

    def serve_http(self, host: str, port: int):
        """Start ``GET /metrics`` in a daemon thread; return ``(http_server, bound port)`` (``shutdown()`` stops it)."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                body = metrics.text()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet: scrapes are frequent
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        try:
            httpd = Server((host.strip("[]"), port), Handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        threading.Thread(target=httpd.serve_forever, name="privsplit-metrics", daemon=True).start()
        return httpd, int(httpd.server_address[1])
