"""`privsplit cloud bench --rate`: the open loop's schedule and latency accounting.

The server here is a one-at-a-time queue in the test's event loop (1 ms per request) that stalls once for 300 ms:
what the accounting must get right is the client side, and a stall at a known time is what tells a closed loop
from an open one. The closed loop (one client) sees a single slow request, because it stops sending while the
server stalls (coordinated omission); the open loop keeps to its schedule, so every request scheduled during the
stall waits, and its latency, counted from its scheduled send, shows it."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from privsplit.cloud.loadgen import _Recorder, _unary_worker, open_loop, schedule

SERVICE_S = 0.001
STALL_S = 0.3
STALL_AT_S = 0.5
RATE = 50.0


class StallingServer:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.t0 = time.perf_counter()
        self.stalled = False

    async def call(self, payload, *, timeout, metadata):
        async with self.lock:
            if not self.stalled and time.perf_counter() - self.t0 >= STALL_AT_S:
                self.stalled = True
                await asyncio.sleep(STALL_S)
            await asyncio.sleep(SERVICE_S)
        return b""


def test_schedule_is_a_fixed_interval():
    at = schedule(200.0, 5, start=10.0)
    assert np.allclose(at, [10.0, 10.005, 10.01, 10.015, 10.02])
    assert len(schedule(50.0, 0)) == 0


def test_open_loop_counts_the_stall_a_closed_loop_hides():
    async def run_open():
        server = StallingServer()
        return await open_loop(
            server.call, b"x", rate=RATE, warmup_s=0.2, duration_s=1.6, timeout=5.0, parse=False
        ), server

    (rec, lags, peak), server = asyncio.run(run_open())
    assert server.stalled
    latency = np.asarray(rec.latency)
    # exactly the requests scheduled inside the 1.6 s window (warm-up ones are sent but not recorded)
    assert len(latency) == 80 and not rec.errors
    assert len(lags) == 80 and float(np.median(lags)) < 0.02  # sent on schedule: the client kept up
    assert latency.min() >= SERVICE_S * 0.9
    # 15 requests were scheduled during the 300 ms stall (at 50/s): each waited for the stall's remainder, so
    # about 10 of them waited over 100 ms, and the longest about the whole stall
    slow = int((latency > 0.1).sum())
    assert slow >= 8, slow
    assert latency.max() >= STALL_S * 0.8
    assert peak >= 10  # they were in flight at once: the schedule did not wait for replies
    # latencies are per request, not smeared: the requests scheduled well after the stall are fast again
    assert float(np.median(latency[-20:])) < 0.05, latency[-20:]
    # in completion order (the server is FIFO), the waits fall by one interval per request after the stall
    worst = int(latency.argmax())
    steps = np.diff(latency[worst : worst + 6])
    assert np.all(np.abs(steps + 1 / RATE) < 0.01), steps

    async def run_closed():
        server, rec, stop = StallingServer(), _Recorder(), [False]
        task = asyncio.ensure_future(_unary_worker(server.call, b"x", rec, stop, 5.0, None, False))
        await asyncio.sleep(0.2)
        rec.recording = True
        await asyncio.sleep(1.6)
        rec.recording = False
        stop[0] = True
        await task
        return rec, server

    closed, server = asyncio.run(run_closed())
    assert server.stalled
    closed_latency = np.asarray(closed.latency)
    assert int((closed_latency > 0.1).sum()) == 1  # the closed loop records the stall once
    assert np.percentile(closed_latency, 99) < np.percentile(latency, 99) / 5  # and its p99 looks far better
