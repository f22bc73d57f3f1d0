"""Prometheus metrics of the server, served as text on ``--metrics-port`` (``GET /metrics``).

Triton's counters, under Triton's exact names (cumulative; durations in microseconds), so dashboards
made for Triton read them: ``nv_inference_request_success``, ``nv_inference_request_failure`` (label
``reason`` = status code), ``nv_inference_count`` (inferences = rows), ``nv_inference_exec_count``
(model executions = batches), ``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
``nv_inference_compute_infer_duration_us``. Distributions (Prometheus histograms) for
percentiles: ``privsplit_request_duration_seconds``, ``privsplit_queue_duration_seconds``,
``privsplit_compute_duration_seconds``, ``privsplit_batch_size``; gauges ``privsplit_queue_depth``,
``privsplit_ready``. Every series carries ``model`` and ``version`` labels.
"""

from __future__ import annotations

import socket
import threading
from bisect import bisect_left
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
# slots of a thread's counter list (every Triton counter but the failures, which are keyed by reason)
_COUNTERS = tuple(name for name in TRITON_COUNTERS if name != "nv_inference_request_failure")
_SUCCESS, _COUNT, _EXEC, _REQUEST_US, _QUEUE_US, _COMPUTE_US = (
    _COUNTERS.index(n)
    for n in (
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    )
)
# histograms: name, help, bucket bounds, scale from the recorded unit (us or rows) to the exposed one
_HISTOGRAMS = (
    ("privsplit_request_duration_seconds", "Request duration in the server", _LATENCY_BUCKETS, 1e-6),
    ("privsplit_queue_duration_seconds", "Queue wait per request", _LATENCY_BUCKETS, 1e-6),
    ("privsplit_compute_duration_seconds", "Model compute per batch", _LATENCY_BUCKETS, 1e-6),
    ("privsplit_batch_size", "Rows per model execution", _BATCH_BUCKETS, 1),
)
_REQUEST_H, _QUEUE_H, _COMPUTE_H, _BATCH_H = range(4)
# bounds in the recorded unit, so the hot path compares integers without converting
_BOUNDS = tuple(tuple(round(b / scale) for b in buckets) for _, _, buckets, scale in _HISTOGRAMS)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Slot:
    """One thread's counters. Only its own thread writes them, so ``+=`` loses nothing (no other writer
    between the read and the write); readers sum every slot. No lock on the request path."""

    __slots__ = ("counters", "failures", "buckets", "sums")

    def __init__(self) -> None:
        self.counters = [0] * len(_COUNTERS)
        self.failures: dict[str, int] = {}
        self.buckets = [[0] * (len(b) + 1) for b in _BOUNDS]  # per bucket (not cumulative), +Inf last
        self.sums = [0] * len(_BOUNDS)

    def add(self, other: _Slot) -> None:
        """Add ``other``'s counts to this slot (each list / dict copied in one C call: no torn read)."""
        self.counters = [a + b for a, b in zip(self.counters, list(other.counters))]
        for reason, n in dict(other.failures).items():
            self.failures[reason] = self.failures.get(reason, 0) + n
        for h, counts in enumerate(other.buckets):
            self.buckets[h] = [a + b for a, b in zip(self.buckets[h], list(counts))]
            self.sums[h] += other.sums[h]


class Metrics:
    """The server's metrics; every method is cheap and thread-safe.

    Counters and histograms are kept per thread (success/failure run on up to --workers gRPC threads
    at once, batch on the model thread): `dict[k] += 1` shared between threads loses counts, and one
    lock around them all costs every request. A reader sums the slots; each count is exact.
    """

    def __init__(self, *, model: str, version: str) -> None:
        prom = require("prometheus_client", package="prometheus-client", extra="cloud")
        self._prom = prom
        self._labels = {"model": model, "version": version}
        self._local = threading.local()
        self._slots: dict[threading.Thread, _Slot] = {}  # the slot of every thread that counted
        self._retired = _Slot()  # the counts of threads that ended (e.g. a stream's reader)
        self._slots_lock = threading.Lock()  # taken once per thread (its first count) and by readers
        self.registry = prom.CollectorRegistry(auto_describe=True)
        labels, lv, r = ("model", "version"), self._labels, self.registry
        self._depth = prom.Gauge("privsplit_queue_depth", "Requests waiting for the model", labels, registry=r).labels(
            **lv
        )
        self._ready = prom.Gauge(
            "privsplit_ready", "1 when serving, 0 while starting or draining", labels, registry=r
        ).labels(**lv)

    def _slot(self) -> _Slot:
        try:
            return self._local.slot
        except AttributeError:
            slot = self._local.slot = _Slot()
            with self._slots_lock:
                for thread in [t for t in self._slots if not t.is_alive()]:  # it counts no more: fold it in
                    self._retired.add(self._slots.pop(thread))
                self._slots[threading.current_thread()] = slot
            return slot

    def success(self, *, request_us: int, queue_us: int, rows: int) -> None:
        slot = self._slot()
        c = slot.counters
        c[_SUCCESS] += 1
        c[_COUNT] += rows
        c[_REQUEST_US] += request_us
        c[_QUEUE_US] += queue_us
        slot.buckets[_REQUEST_H][bisect_left(_BOUNDS[_REQUEST_H], request_us)] += 1
        slot.sums[_REQUEST_H] += request_us
        slot.buckets[_QUEUE_H][bisect_left(_BOUNDS[_QUEUE_H], queue_us)] += 1
        slot.sums[_QUEUE_H] += queue_us

    def failure(self, reason: str) -> None:
        failures = self._slot().failures
        failures[reason] = failures.get(reason, 0) + 1

    def batch(self, *, rows: int, compute_us: int) -> None:
        slot = self._slot()
        c = slot.counters
        c[_EXEC] += 1
        c[_COMPUTE_US] += compute_us
        slot.buckets[_COMPUTE_H][bisect_left(_BOUNDS[_COMPUTE_H], compute_us)] += 1
        slot.sums[_COMPUTE_H] += compute_us
        slot.buckets[_BATCH_H][bisect_left(_BOUNDS[_BATCH_H], rows)] += 1
        slot.sums[_BATCH_H] += rows

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def _snapshot(self) -> _Slot:
        """The sums over every thread's slot."""
        total = _Slot()
        with self._slots_lock:
            total.add(self._retired)
            for slot in self._slots.values():
                total.add(slot)
        return total

    def counter(self, name: str, reason: str | None = None) -> int:
        """The current value of a Triton counter (failures: of one ``reason``, or all)."""
        total = self._snapshot()
        if name == "nv_inference_request_failure":
            return total.failures.get(reason, 0) if reason is not None else sum(total.failures.values())
        return total.counters[_COUNTERS.index(name)]

    def text(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        base = ",".join(f'{k}="{_escape(v)}"' for k, v in self._labels.items())
        snap = self._snapshot()
        counters, failures, buckets, sums = snap.counters, snap.failures, snap.buckets, snap.sums
        lines = []
        for name, doc in TRITON_COUNTERS.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
            if name == "nv_inference_request_failure":
                for reason, count in sorted(failures.items()):
                    lines.append(f'{name}{{{base},reason="{_escape(reason)}"}} {count}')
            else:
                lines.append(f"{name}{{{base}}} {counters[_COUNTERS.index(name)]}")
        for (name, doc, bounds, scale), counts, total in zip(_HISTOGRAMS, buckets, sums):
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
            cumulative = 0
            for bound, count in zip((*bounds, "+Inf"), counts):
                cumulative += count
                le = bound if isinstance(bound, str) else self._prom.utils.floatToGoString(bound)
                lines.append(f'{name}_bucket{{{base},le="{le}"}} {cumulative}')
            lines += [f"{name}_count{{{base}}} {cumulative}", f"{name}_sum{{{base}}} {float(total * scale)!r}"]
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
