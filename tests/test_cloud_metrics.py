"""The server's metrics without a server: counts exact under concurrent writers (threads that come and go
included), and an exposition that Prometheus' own parser reads with the right buckets and sums."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from privsplit.cloud.metrics import Metrics


def test_counts_stay_exact_with_concurrent_writers_readers_and_short_lived_threads():
    metrics = Metrics(model="m", version="1")
    stop, seen = threading.Event(), []

    def read():  # a scraper reading while the counts move: never a torn or decreasing value
        while not stop.is_set():
            seen.append(metrics.counter("nv_inference_request_success"))
            metrics.text()

    def hammer(i):
        for _ in range(2000):
            metrics.success(request_us=10, queue_us=1, rows=2)
            metrics.failure("UNAVAILABLE" if i % 2 else "INVALID_ARGUMENT")
        metrics.batch(rows=4, compute_us=7)

    reader = threading.Thread(target=read)
    reader.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(hammer, range(32)))
    for i in range(40):  # one-off threads (like a stream's reader): their counts outlive them
        t = threading.Thread(target=hammer, args=(i,))
        t.start()
        t.join()
    stop.set()
    reader.join()
    n = 72 * 2000
    assert metrics.counter("nv_inference_request_success") == n
    assert metrics.counter("nv_inference_count") == 2 * n
    assert metrics.counter("nv_inference_request_duration_us") == 10 * n
    assert metrics.counter("nv_inference_queue_duration_us") == n
    assert metrics.counter("nv_inference_exec_count") == 72
    assert metrics.counter("nv_inference_compute_infer_duration_us") == 7 * 72
    assert metrics.counter("nv_inference_request_failure", "UNAVAILABLE") == 36 * 2000
    assert metrics.counter("nv_inference_request_failure") == n
    assert seen == sorted(seen)


def test_exposition_parses_with_cumulative_buckets_and_exact_sums():
    metrics = Metrics(model="m", version="v")
    for us in (50, 100, 250, 251, 7_000_000):  # on a bound counts in that bucket ("le"), beyond the last: +Inf
        metrics.success(request_us=us, queue_us=0, rows=1)
    for rows in (1, 3, 64, 300):
        metrics.batch(rows=rows, compute_us=1000)
    metrics.failure("NOT_FOUND")
    metrics.ready(True)
    families = {f.name: f for f in text_string_to_metric_families(metrics.text().decode())}
    samples = {
        (s.name, s.labels.get("le"), s.labels.get("reason")): s.value for f in families.values() for s in f.samples
    }
    assert all(s.labels["model"] == "m" and s.labels["version"] == "v" for f in families.values() for s in f.samples)
    req = "privsplit_request_duration_seconds"
    assert families[req].type == "histogram"
    assert [samples[(f"{req}_bucket", le, None)] for le in ("0.0001", "0.00025", "0.0005", "5.0", "+Inf")] == [
        2,
        3,
        4,
        4,
        5,
    ]
    assert samples[(f"{req}_count", None, None)] == 5
    assert abs(samples[(f"{req}_sum", None, None)] - 7.000651) < 1e-9
    batch = "privsplit_batch_size"
    assert [samples[(f"{batch}_bucket", le, None)] for le in ("1.0", "2.0", "4.0", "64.0", "256.0", "+Inf")] == [
        1,
        1,
        2,
        3,
        3,
        4,
    ]
    assert samples[(f"{batch}_sum", None, None)] == 368
    # Triton's exact sample names (no _total, no _created: what Triton exposes and its dashboards query)
    assert samples[("nv_inference_request_failure", None, "NOT_FOUND")] == 1
    assert samples[("nv_inference_exec_count", None, None)] == 4
    assert "_total" not in metrics.text().decode() and "_created" not in metrics.text().decode()
    assert samples[("privsplit_ready", None, None)] == 1
