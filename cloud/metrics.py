"""Prometheus metrics of the server through ``prometheus_client``, served on ``--metrics-port`` (``GET /metrics``).

Triton's counters, under Triton's exact sample names (cumulative; durations in microseconds), so dashboards
made for Triton read them: ``nv_inference_request_success``, ``nv_inference_request_failure`` (label
``reason`` = status code), ``nv_inference_count`` (inferences = rows), ``nv_inference_exec_count``
(model executions = batches), ``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
``nv_inference_compute_infer_duration_us``. Distributions (Prometheus histograms) for percentiles:
``privsplit_request_duration_seconds``, ``privsplit_queue_duration_seconds``, ``privsplit_compute_duration_seconds``,
``privsplit_batch_size``; gauges ``privsplit_queue_depth``, ``privsplit_ready``. Every series carries ``model``
and ``version`` labels.

The counting, the exposition and the HTTP server are ``prometheus_client``'s. It would name a counter's sample
``<name>_total``; Triton's samples have no suffix, so :class:`_TritonNames` hands the Triton families to the
exposition untyped under their own names (every other family is as ``prometheus_client`` makes it).

``privsplit serve --workers N`` uses ``prometheus_client``'s multiprocess mode: the supervisor prepares a folder
(:func:`multiprocess_dir`), each worker process writes its counts there (``PROMETHEUS_MULTIPROC_DIR`` is set in its
environment before ``prometheus_client`` is imported), and the supervisor's one ``/metrics``
(:func:`serve_multiprocess`) adds up every worker: one scrape covers them all.
"""

from __future__ import annotations

import os
from pathlib import Path

from privsplit.errors import ConfigError, require

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
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
_LABELS = ("model", "version")


def _prom():
    return require("prometheus_client", package="prometheus-client", extra="cloud")


class _TritonNames:
    """A collector that passes ``source``'s families through, the Triton counters renamed to their own sample
    names (no ``_total``, no ``_created``: what Triton exposes and dashboards query); ``_created`` samples of
    the other families are dropped too (Triton has none)."""

    def __init__(self, source) -> None:
        self._source = source

    def collect(self):
        from prometheus_client.core import Metric

        for family in self._source.collect():
            if family.name in TRITON_COUNTERS:
                out = Metric(family.name, family.documentation, "unknown")
                for s in family.samples:
                    if s.name == family.name + "_total":
                        out.add_sample(family.name, s.labels, s.value)
                yield out
                continue
            keep = [s for s in family.samples if not s.name.endswith("_created")]
            if keep:
                family.samples = keep
                yield family


class Metrics:
    """The server's metrics (``prometheus_client`` counters, histograms and gauges); every method is thread-safe.

    In a worker of ``--workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set), the values live in that folder and the
    supervisor serves them; :meth:`counter` still reads this process's own counts.
    """

    def __init__(self, *, model: str, version: str) -> None:
        prom = _prom()
        self.registry = prom.CollectorRegistry(auto_describe=True)
        lv, r = {"model": model, "version": version}, self.registry
        self._counters = {
            name: prom.Counter(name, doc, [*_LABELS, "reason"] if name.endswith("failure") else _LABELS, registry=r)
            for name, doc in TRITON_COUNTERS.items()
        }
        self._failure = self._counters["nv_inference_request_failure"]
        self._reasons: set[str] = set()
        self._lv = lv
        c = {name: counter.labels(**lv) for name, counter in self._counters.items() if not name.endswith("failure")}
        self._success, self._count, self._exec = (
            c["nv_inference_request_success"],
            c["nv_inference_count"],
            c["nv_inference_exec_count"],
        )
        self._request_us = c["nv_inference_request_duration_us"]
        self._queue_us = c["nv_inference_queue_duration_us"]
        self._compute_us = c["nv_inference_compute_infer_duration_us"]
        self._by_name = c

        def histogram(name, doc, buckets):
            return prom.Histogram(name, doc, _LABELS, buckets=buckets, registry=r).labels(**lv)

        self._request_h = histogram(
            "privsplit_request_duration_seconds", "Request duration in the server", _LATENCY_BUCKETS
        )
        self._queue_h = histogram("privsplit_queue_duration_seconds", "Queue wait per request", _LATENCY_BUCKETS)
        self._compute_h = histogram("privsplit_compute_duration_seconds", "Model compute per batch", _LATENCY_BUCKETS)
        self._batch_h = histogram("privsplit_batch_size", "Rows per model execution", _BATCH_BUCKETS)
        # across workers: the requests waiting in all of them; ready only while every live worker is
        self._depth = prom.Gauge(
            "privsplit_queue_depth", "Requests waiting for the model", _LABELS, registry=r, multiprocess_mode="livesum"
        ).labels(**lv)
        self._ready = prom.Gauge(
            "privsplit_ready",
            "1 when serving, 0 while starting or draining",
            _LABELS,
            registry=r,
            multiprocess_mode="livemin",
        ).labels(**lv)
        self._exposed = prom.CollectorRegistry(auto_describe=False)
        self._exposed.register(_TritonNames(self.registry))

    def success(self, *, request_us: int, queue_us: int, rows: int) -> None:
        self._success.inc()
        self._count.inc(rows)
        self._request_us.inc(request_us)
        self._queue_us.inc(queue_us)
        self._request_h.observe(request_us * 1e-6)
        self._queue_h.observe(queue_us * 1e-6)

    def failure(self, reason: str) -> None:
        self._failure.labels(**self._lv, reason=reason).inc()
        self._reasons.add(reason)

    def batch(self, *, rows: int, compute_us: int) -> None:
        self._exec.inc()
        self._compute_us.inc(compute_us)
        self._compute_h.observe(compute_us * 1e-6)
        self._batch_h.observe(rows)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def counter(self, name: str, reason: str | None = None) -> int:
        """This process's current value of a Triton counter (failures: of one ``reason``, or all)."""
        if name == "nv_inference_request_failure":
            reasons = [reason] if reason is not None else sorted(self._reasons)
            return sum(
                int(self._failure.labels(**self._lv, reason=r)._value.get()) for r in reasons if r in self._reasons
            )
        if name not in self._by_name:
            raise KeyError(f"{name!r} is not a Triton counter of privsplit ({', '.join(TRITON_COUNTERS)})")
        return int(self._by_name[name]._value.get())

    def text(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of this process's metrics."""
        return _prom().generate_latest(self._exposed)

    def serve_http(self, host: str, port: int):
        """Serve ``GET /metrics`` in a daemon thread; ``(http_server, bound port)`` (``shutdown()`` stops it)."""
        return _start_http(self._exposed, host, port)


def _start_http(registry, host: str, port: int):
    try:
        httpd, _thread = _prom().start_http_server(port, addr=host.strip("[]"), registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return httpd, int(httpd.server_port)


def multiprocess_dir(base: str | Path | None = None) -> Path:
    """The folder the workers of one ``--workers N`` server write their metrics to: ``PROMETHEUS_MULTIPROC_DIR`` if
    the user set it (emptied of old ``*.db`` files, as prometheus_client requires), else a new temporary folder."""
    import tempfile

    chosen = base or os.environ.get(MULTIPROC_ENV)
    if not chosen:
        return Path(tempfile.mkdtemp(prefix="privsplit-metrics-"))
    path = Path(chosen)
    try:
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
    except OSError as exc:
        raise ConfigError(f"{MULTIPROC_ENV}={path}: {exc.strerror or exc}: point it at a writable folder") from None
    return path


def serve_multiprocess(folder: Path, host: str, port: int):
    """The supervisor's one ``/metrics``: every worker's counts in ``folder`` added up (live gauges of live ones)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    prom = _prom()
    source = prom.CollectorRegistry(auto_describe=False)
    MultiProcessCollector(source, path=str(folder))
    exposed = prom.CollectorRegistry(auto_describe=False)
    exposed.register(_TritonNames(source))
    return _start_http(exposed, host, port)


def worker_gone(folder: Path, pid: int) -> None:
    """A worker exited: drop its live gauges (its counts stay in the sums: counters never go down)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, str(folder))
