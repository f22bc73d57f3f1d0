"""The load probe (like Triton's perf_analyzer): a closed-loop concurrency sweep against a running server.

For each concurrency ``c``, ``c`` workers each keep one request in flight (unary ``ModelInfer``, or one
``ModelStreamInfer`` stream per worker with ``stream=True``) for ``duration_s`` after a warm-up, and
the probe reports throughput, latency percentiles (p50/p90/p99) and the server's own compute and
queue time (reply parameters ``compute_us`` / ``queue_us``) beside them. The request is serialised
once and re-sent (as perf_analyzer does), so client-side protobuf cost stays out of the way.

``target`` may name replicas (``IP:PORT,IP:PORT`` or ``dns:///NAME:PORT``): every channel then balances
its calls over them with gRPC's ``round_robin`` (see :mod:`privsplit.proto.channel`); give the
:class:`DialConfig` an ``UnavailableRetry`` so gRPC re-sends a call that a dying replica refused.
``connections``: TCP connections per level (each channel has its own); a ``privsplit serve --workers N``
server balances per connection (SO_REUSEPORT), so give it several per worker (e.g. 4 N).

``rate`` (open loop, like perf_analyzer's request-rate mode): for each offered rate R, request i is sent at the
scheduled time ``t0 + i / R`` whether or not earlier ones have come back, and its latency is measured from that
scheduled time, not from when the client got round to sending it. A closed loop sends the next request only
after the last reply, so a server that stalls for a second delays (and hides) the requests that would have
queued behind the stall: coordinated omission, which flatters p99. The open loop records them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from privsplit.errors import ConfigError
from privsplit.proto.channel import DialConfig
from privsplit.results import check_schema, from_dict, read_json, save_json, to_dict

LOAD_SCHEMA_VERSION = 1
SAMPLE_CAP = 2000  # latencies kept per level for histograms
MAX_RATE = 100_000.0  # requests per second one asyncio client can schedule at all


@dataclass(frozen=True)
class LoadSpec:
    target: str
    concurrency: tuple[int, ...] = (1, 8, 32)
    duration_s: float = 10.0
    warmup_s: float = 1.0
    stream: bool = False
    timeout_s: float = 30.0
    parse_replies: bool = True  # False: count replies without reading them (for a bare echo baseline)
    connections: int | None = None  # TCP connections per level (None: 1 per 16 workers, at most 4)
    rate: tuple[float, ...] = ()  # offered request rates (open loop); empty: the closed-loop concurrency sweep

    @property
    def open_loop(self) -> bool:
        return bool(self.rate)

    def __post_init__(self) -> None:
        if self.rate and (min(self.rate) <= 0 or max(self.rate) > MAX_RATE):
            raise ConfigError(f"--rate needs request rates in (0, {MAX_RATE:g}] per second, got {list(self.rate)}")
        if self.rate and self.stream:
            raise ConfigError("--rate sends unary calls at scheduled times: drop --stream")
        if self.connections is not None and self.connections < 1:
            raise ConfigError(f"--connections must be >= 1, got {self.connections}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"--concurrency needs values >= 1, got {list(self.concurrency)}")
        if not self.duration_s > 0 or self.warmup_s < 0:
            raise ConfigError(f"--duration must be > 0 and warm-up >= 0, got {self.duration_s} / {self.warmup_s}")

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> LoadSpec:
        return from_dict(cls, data)


@dataclass(frozen=True)
class LoadPoint:
    """One concurrency level: throughput, client latency percentiles and the server's own times."""

    concurrency: int
    stream: bool
    requests: int
    errors: int
    duration_s: float
    throughput: float  # successful requests per second
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    server_compute_us_p50: float
    server_queue_us_p50: float
    batch_size_mean: float
    error_codes: dict[str, int] = field(default_factory=dict)
    latency_sample_ms: tuple[float, ...] = ()  # up to SAMPLE_CAP client latencies, evenly spaced over the level
    offered_rate: float | None = None  # open loop: the scheduled requests per second (None: closed loop)
    send_lag_ms_p99: float | None = None  # open loop: p99 of (actual send - scheduled send); large = client-bound


@dataclass(frozen=True)
class LoadResult:
    spec: LoadSpec
    points: tuple[LoadPoint, ...]
    request_bytes: int
    rows_per_request: int
    label: str = ""
    schema_version: int = LOAD_SCHEMA_VERSION

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, **to_dict(self)}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "load result") -> LoadResult:
        hint = "re-run `privsplit bench ... --json FILE`"
        return from_dict(cls, check_schema(data, version=LOAD_SCHEMA_VERSION, source=source, hint=hint))

    def save(self, path: Path) -> Path:
        return save_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> LoadResult:
        hint = "re-run `privsplit bench ... --json FILE`"
        return cls.from_json(read_json(path, what="a load result", hint=hint), source=str(path))

    def summary(self) -> str:
        head = (
            f"{self.label + ': ' if self.label else ''}{self.spec.target} {'stream' if self.spec.stream else 'unary'}, "
            f"{self.request_bytes} B requests of {self.rows_per_request} row(s), {self.spec.duration_s:g} s per level"
        )
        if self.spec.open_loop:
            head = head.replace(" unary,", " unary open loop (latency from the scheduled send),")
        rows = [
            f"{'rate' if self.spec.open_loop else 'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'srv compute us':>15} {'srv queue us':>13} {'batch':>6} {'errors':>7}"
        ]
        for p in self.points:
            level = f"{p.offered_rate:>5g}" if p.offered_rate is not None else f"{p.concurrency:>5}"
            rows.append(
                f"{level} {p.throughput:>9.1f} {p.p50_ms:>8.3f} {p.p90_ms:>8.3f} {p.p99_ms:>8.3f} "
                f"{p.server_compute_us_p50:>15.0f} {p.server_queue_us_p50:>13.0f} "
                f"{p.batch_size_mean:>6.1f} {p.errors:>7}"
            )
        return "\n".join([head, *rows])


_UNPARSED = (True, "", 0, 0, 0)


def _reply_stats(raw: bytes, stream: bool, parse: bool = True) -> tuple[bool, str, int, int, int]:
    """(ok, error, compute_us, queue_us, batch_size) of one serialised reply."""
    from privsplit.proto.inference import open_inference_grpc_pb2 as pb

    if not parse:
        return _UNPARSED
    if stream:
        msg = pb.ModelStreamInferResponse.FromString(raw)
        if msg.error_message:
            return False, msg.error_message.split(":", 1)[0], 0, 0, 0
        params = msg.infer_response.parameters
    else:
        params = pb.ModelInferResponse.FromString(raw).parameters

    def get(key):
        p = params.get(key)
        return int(p.int64_param) if p is not None else 0

    return True, "", get("compute_us"), get("queue_us"), get("batch_size")


class _Recorder:
    def __init__(self) -> None:
        self.latency: list[float] = []
        self.compute: list[int] = []
        self.queue: list[int] = []
        self.batch: list[int] = []
        self.errors: dict[str, int] = {}
        self.recording = False

    def ok(self, seconds: float, stats) -> None:
        if self.recording:
            self.latency.append(seconds)
            self.compute.append(stats[2])
            self.queue.append(stats[3])
            self.batch.append(stats[4])

    def error(self, code: str) -> None:
        if self.recording:
            self.errors[code] = self.errors.get(code, 0) + 1


async def _unary_worker(
    call, payload: bytes, rec: _Recorder, stop: list, timeout: float, metadata, parse: bool
) -> None:
    import grpc

    while not stop[0]:
        started = time.perf_counter()
        try:
            raw = await call(payload, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            rec.error(exc.code().name)
            await asyncio.sleep(0.001)
            continue
        stats = _reply_stats(raw, False, parse)
        rec.ok(time.perf_counter() - started, stats) if stats[0] else rec.error(stats[1])


async def _stream_worker(
    call, payload: bytes, rec: _Recorder, stop: list, timeout: float, metadata, parse: bool
) -> None:
    import grpc

    try:
        stream = call(metadata=metadata)
        while not stop[0]:
            started = time.perf_counter()
            await stream.write(payload)
            raw = await asyncio.wait_for(stream.read(), timeout)
            if raw is grpc.aio.EOF:
                rec.error("EOF")
                return
            stats = _reply_stats(raw, True, parse)
            rec.ok(time.perf_counter() - started, stats) if stats[0] else rec.error(stats[1])
        await stream.done_writing()
        async for _ in stream:
            pass
    except grpc.aio.AioRpcError as exc:
        rec.error(exc.code().name)
    except asyncio.TimeoutError:
        rec.error("DEADLINE_EXCEEDED")


def schedule(rate: float, count: int, start: float = 0.0) -> np.ndarray:
    """The open loop's send times: request ``i`` at ``start + i / rate`` (a constant interval, as perf_analyzer's
    default request distribution)."""
    return start + np.arange(count, dtype=np.float64) / float(rate)


async def open_loop(
    call,
    payload: bytes,
    *,
    rate: float,
    warmup_s: float,
    duration_s: float,
    timeout: float,
    metadata=None,
    parse: bool = True,
    clock=time.perf_counter,
) -> tuple[_Recorder, list[float], int]:
    """Send ``payload`` with ``call`` at ``rate`` per second for ``warmup_s + duration_s``; record the requests
    scheduled inside the measured window, each latency from its scheduled send time. Returns the recorder, the
    send lags (actual - scheduled, seconds) of the recorded requests and the peak number in flight."""
    import grpc

    rec, lags = _Recorder(), []
    in_flight, peak = [0], [0]
    rec.recording = True  # recording is decided per request, by its scheduled time

    async def one(scheduled: float, measured: bool) -> None:
        lag = clock() - scheduled
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            raw = await call(payload, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if measured:
                rec.error(exc.code().name)
            return
        finally:
            in_flight[0] -= 1
        done = clock()
        if measured:
            stats = _reply_stats(raw, False, parse)
            rec.ok(done - scheduled, stats) if stats[0] else rec.error(stats[1])
            lags.append(lag)

    count = int(round((warmup_s + duration_s) * rate))
    t0 = clock()
    window = (t0 + warmup_s, t0 + warmup_s + duration_s)
    tasks = []
    for at in schedule(rate, count, t0):
        wait = at - clock()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(one(float(at), window[0] <= at < window[1])))
    await asyncio.gather(*tasks, return_exceptions=True)
    return rec, lags, peak[0]


def _pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


async def _rate_level(spec: LoadSpec, dial: DialConfig, payload: bytes, rate: float, rows: int) -> LoadPoint:
    from privsplit.proto.channel import dial_aio, stub

    n_channels = spec.connections or 1
    channels = [dial_aio(dial) for _ in range(n_channels)]
    calls = [stub(ch, raw=True, raw_replies=True).ModelInfer for ch in channels]
    turn = [0]

    async def call(payload, **kw):
        turn[0] += 1
        return await calls[turn[0] % n_channels](payload, **kw)

    try:
        rec, lags, peak = await open_loop(
            call,
            payload,
            rate=rate,
            warmup_s=spec.warmup_s,
            duration_s=spec.duration_s,
            timeout=spec.timeout_s,
            metadata=dial.metadata or None,
            parse=spec.parse_replies,
        )
    finally:
        for ch in channels:
            await ch.close()
    point = _point(spec, rec, spec.duration_s, peak, rows)
    lag_p99 = _pct(np.asarray(lags) * 1e3, 99) if lags else None
    return dataclasses.replace(point, offered_rate=rate, send_lag_ms_p99=lag_p99)


async def _level(spec: LoadSpec, dial: DialConfig, payload: bytes, concurrency: int, rows: int) -> LoadPoint:
    from privsplit.proto.channel import dial_aio, stub

    n_channels = max(1, min(4, concurrency // 16 + 1)) if spec.connections is None else spec.connections
    n_channels = min(n_channels, concurrency)  # one channel = one connection (DialConfig: local subchannel pool)
    channels = [dial_aio(dial) for _ in range(n_channels)]
    stubs = [stub(ch, raw=True, raw_replies=True) for ch in channels]  # pre-serialised bytes in and out
    calls = [s.ModelStreamInfer if spec.stream else s.ModelInfer for s in stubs]
    metadata = dial.metadata or None
    rec, stop = _Recorder(), [False]
    worker = _stream_worker if spec.stream else _unary_worker
    try:
        tasks = [
            asyncio.ensure_future(
                worker(calls[i % n_channels], payload, rec, stop, spec.timeout_s, metadata, spec.parse_replies)
            )
            for i in range(concurrency)
        ]
        await asyncio.sleep(spec.warmup_s)
        rec.recording = True
        started = time.perf_counter()
        await asyncio.sleep(spec.duration_s)
        rec.recording = False
        elapsed = time.perf_counter() - started
        stop[0] = True
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for ch in channels:
            await ch.close()
    return _point(spec, rec, elapsed, concurrency, rows)


def _point(spec: LoadSpec, rec: _Recorder, elapsed: float, concurrency: int, rows: int) -> LoadPoint:
    lat_ms = np.asarray(rec.latency) * 1e3
    n = len(lat_ms)
    return LoadPoint(
        concurrency=concurrency,
        stream=spec.stream,
        requests=n,
        errors=sum(rec.errors.values()),
        duration_s=round(elapsed, 3),
        throughput=n / elapsed,
        rows_per_s=n * rows / elapsed,
        p50_ms=_pct(lat_ms, 50),
        p90_ms=_pct(lat_ms, 90),
        p99_ms=_pct(lat_ms, 99),
        mean_ms=float(lat_ms.mean()) if n else float("nan"),
        server_compute_us_p50=_pct(rec.compute, 50),
        server_queue_us_p50=_pct(rec.queue, 50),
        batch_size_mean=float(np.mean(rec.batch)) if n else float("nan"),
        error_codes=dict(rec.errors),
        latency_sample_ms=tuple(
            round(float(v), 4) for v in lat_ms[np.linspace(0, n - 1, min(n, SAMPLE_CAP)).astype(int)]
        )
        if n
        else (),
    )


def run_load(spec: LoadSpec, request, *, dial: DialConfig | None = None, label: str = "", progress=None) -> LoadResult:
    """Sweep ``spec.concurrency`` with ``request`` (an :class:`~privsplit.proto.messages.InferRequest`).

    ``dial``: how to reach ``spec.target`` (TLS, token; :mod:`privsplit.proto.channel`), default plaintext.
    ``progress(point)`` is called after each level (e.g. to print it).
    """
    payload = request.to_proto().SerializeToString()
    dial = dial or DialConfig(target=spec.target)
    if dial.target != spec.target:
        raise ConfigError(f"the dial target {dial.target!r} is not the load target {spec.target!r}")
    dial = dataclasses.replace(dial, max_message_bytes=max(dial.max_message_bytes, 2 * len(payload)))
    rows = int(request.inputs[0].data.shape[0])
    points = []
    levels: list[float] = list(spec.rate) if spec.open_loop else list(spec.concurrency)
    for level in levels:
        if spec.open_loop:
            point = asyncio.run(_rate_level(spec, dial, payload, level, rows))
        else:
            point = asyncio.run(_level(spec, dial, payload, int(level), rows))
        points.append(point)
        if progress is not None:
            progress(point)
    return LoadResult(spec=spec, points=tuple(points), request_bytes=len(payload), rows_per_request=rows, label=label)
