"""The on-device latency probe, in the manner of TFLite's ``benchmark_model``.

Loads the bundle (init), runs one cold request (first), ``warmup`` unmeasured requests, then ``runs``
measured ones (or until ``max_seconds``), each the whole device path for one image:

    decode      image file -> uint8 pixels at the model size (or, for camera frames, crop + resize)
    preprocess  normalise + quantize the encoder input
    encode      the interpreter
    quantize    dequantize, + channel noise, wire int8 (C, h, w)
    serialize   the ModelInferRequest protobuf
    rpc         round trip to the server (with ``server``); ``server`` = its own compute + queue time

and reports init, first, mean/p50/p90/p99 of the total, every stage's percentiles, peak RSS and the
bytes per request (beside the input JPEG and float32 features). The same settings apply to every
backend, so results compare side by side. Peak RSS is the process's (run one backend per process).
"""

from __future__ import annotations

import io
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from privsplit.edge.acceptance import machine_record
from privsplit.errors import ConfigError, DataError
from privsplit.results import check_schema, from_dict, read_json, save_json, to_dict

BENCH_SCHEMA_VERSION = 1
_HINT = "re-run `privsplit edge bench BUNDLE --json FILE`"
STAGES = ("decode", "preprocess", "encode", "quantize", "serialize", "rpc", "server")


class InputKind(str, Enum):
    FILE = "file"  # an encoded image file is decoded every request
    FRAME = "frame"  # a uint8 camera frame (already decoded) is cropped/resized every request


@dataclass(frozen=True)
class BenchSpec:
    runtime: str | None = None  # None: the pipeline's automatic choice
    encoder: str | None = None  # None: the bundle's default (or the best one the runtime runs)
    threads: int = 1
    warmup: int = 10
    runs: int = 100
    max_seconds: float | None = None  # stop measuring after this long even if fewer runs were made
    server: str | None = None  # HOST:PORT: include the RPC round trip
    input: InputKind = InputKind.FILE
    image: str | None = None  # image file; None: a synthetic JPEG at the model size (documented in the result)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.threads < 1 or self.runs < 1 or self.warmup < 0:
            raise ConfigError(
                f"need threads >= 1, runs >= 1, warmup >= 0 (got {self.threads}, {self.runs}, {self.warmup})"
            )
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"--max-seconds must be > 0, got {self.max_seconds}")

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> BenchSpec:
        return from_dict(cls, data)


@dataclass(frozen=True)
class StageStats:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def of(cls, values_ms) -> StageStats:
        v = np.asarray(values_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(v, [50, 90, 99])
        return cls(
            mean_ms=round(float(v.mean()), 4),
            p50_ms=round(float(p50), 4),
            p90_ms=round(float(p90), 4),
            p99_ms=round(float(p99), 4),
        )


@dataclass(frozen=True)
class BenchResult:
    spec: BenchSpec
    runtime: str
    encoder: str
    bundle_version: str
    input_desc: str
    init_ms: float
    connect_ms: float | None
    first_ms: float
    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    peak_rss_mb: float
    stages: dict[str, StageStats]
    bytes_per_request: int
    bytes_float32_request: int  # the same request with float32 features
    bytes_input_jpeg: int  # the model-size input as a quality-90 JPEG (what sending the image instead would cost)
    feature_bytes: int  # the int8 feature tensor alone
    platform: dict = field(default_factory=dict)
    samples_ms: tuple[float, ...] = ()  # every measured run's device total (ms), in order: for histograms

    @property
    def overhead_share(self) -> float:
        """Everything on the device but ``encode`` (decode, preprocess, quantize, serialize; p50) over encode's p50."""
        enc = self.stages["encode"].p50_ms
        rest = sum(self.stages[s].p50_ms for s in ("decode", "preprocess", "quantize", "serialize") if s in self.stages)
        return rest / enc if enc > 0 else float("inf")

    def to_json(self) -> dict:
        share = to_dict(round(self.overhead_share, 4))
        return {"schema_version": BENCH_SCHEMA_VERSION, **to_dict(self), "overhead_share": share}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "bench result") -> BenchResult:
        return from_dict(cls, check_schema(data, version=BENCH_SCHEMA_VERSION, source=source, hint=_HINT))

    def save(self, path: str | Path) -> None:
        save_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> BenchResult:
        return cls.from_json(read_json(path, what="an edge bench result", hint=_HINT), source=str(path))

    def summary(self) -> str:
        where = f"{self.platform.get('machine', '?')} {self.platform.get('cpu', '')}".strip()
        emulated = self.platform.get("emulated")
        lines = [
            f"edge bench: {self.encoder} on {self.runtime}, {self.spec.threads} thread(s), "
            f"bundle {self.bundle_version}, "
            f"input {self.input_desc}",
            f"init {self.init_ms:.1f} ms"
            + (f", connect {self.connect_ms:.1f} ms" if self.connect_ms is not None else "")
            + f", first {self.first_ms:.2f} ms, {self.runs} runs, peak RSS {self.peak_rss_mb:.0f} MB",
            f"{'stage':<11}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}  (ms)",
        ]
        for name, s in self.stages.items():
            lines.append(f"{name:<11}{s.mean_ms:>9.3f}{s.p50_ms:>9.3f}{s.p90_ms:>9.3f}{s.p99_ms:>9.3f}")
        lines.append(f"{'total':<11}{self.mean_ms:>9.3f}{self.p50_ms:>9.3f}{self.p90_ms:>9.3f}{self.p99_ms:>9.3f}")
        lines.append(
            f"device overhead (all but encode, p50) {100 * self.overhead_share:.1f} % of encode; bytes/request "
            f"{self.bytes_per_request} "
            f"(float32 features {self.bytes_float32_request}, input JPEG {self.bytes_input_jpeg})"
        )
        lines.append(
            f"machine: {where}"
            + (f"; EMULATED ({emulated}): these timings are not the latency of real hardware" if emulated else "")
        )
        return "\n".join(lines)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    Linux: ``VmHWM`` of /proc/self/status (the high-water mark of this program's memory; getrusage's
    ``ru_maxrss`` would also count the parent's memory copied at fork, kept across exec).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB elsewhere


def synthetic_jpeg(size: int, channels: int, *, seed: int) -> bytes:
    """A deterministic smooth image (gradients plus mild noise) as a quality-90 JPEG at ``size`` px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    planes = [np.sin(np.pi * (xx * (1 + c) + yy * (2 - c))) for c in range(3)]
    img = (np.stack(planes, -1) * 100 + 128 + rng.normal(0, 8, (size, size, 3))).clip(0, 255).astype(np.uint8)
    pil = Image.fromarray(img, "RGB").convert("L" if channels == 1 else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _jpeg_bytes(pixels: np.ndarray) -> int:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, format="JPEG", quality=90)
    return len(buf.getvalue())


def _read_image_file(path: Path) -> bytes:
    """The bytes of ``--image``, checked to decode as an image now (a one-line DataError, not a traceback later)."""
    from PIL import Image

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"--image {path}: no such file: pass an existing JPEG or PNG file") from None
    except IsADirectoryError:
        raise DataError(f"--image {path} is a folder: pass one image file") from None
    except OSError as exc:
        raise DataError(f"--image {path}: cannot read it ({exc.strerror or exc}): check its permissions") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError and more on bad files
        raise DataError(f"--image {path}: not an image Pillow can decode ({exc}): pass a JPEG or PNG file") from None
    return data


def run_bench(
    bundle, spec: BenchSpec = BenchSpec(), *, trust_key=None, client_config=None, progress=None
) -> BenchResult:
    """Measure ``bundle`` (an edge bundle folder) with ``spec``. ``client_config`` (an
    :class:`~privsplit.edge.client.ClientConfig`) overrides how ``spec.server`` is reached (TLS, token)."""
    from privsplit.edge.pipeline import EdgePipeline
    from privsplit.proto.wire import features_request

    t0 = time.perf_counter()
    pipe = EdgePipeline.open(
        bundle, trust_key=trust_key, encoder=spec.encoder, runtime=spec.runtime, threads=spec.threads, seed=spec.seed
    )
    init_ms = (time.perf_counter() - t0) * 1e3
    pre = pipe.preprocessor
    size, channels = pre.spec.size, pre.spec.channels
    if spec.image is not None:
        data = _read_image_file(Path(spec.image))
        desc = f"{Path(spec.image).name} ({len(data)} bytes)"
    else:
        data = synthetic_jpeg(size, channels, seed=spec.seed)
        desc = f"synthetic {size}x{size} JPEG ({len(data)} bytes)"
    frame = None
    if spec.input is InputKind.FRAME:
        from PIL import Image, ImageOps

        name = "the synthetic JPEG" if spec.image is None else spec.image
        try:
            with Image.open(io.BytesIO(data)) as img:
                frame = np.asarray(ImageOps.exif_transpose(img).convert("RGB" if channels == 3 else "L"))
        except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
            raise DataError(f"--image {name}: cannot decode it as an image ({exc}): pass a JPEG or PNG file") from None
        desc = f"{frame.shape[1]}x{frame.shape[0]} uint8 frame from {desc}"

    client, connect_ms = None, None
    if spec.server is not None:
        from privsplit.edge.client import ClientConfig, EdgeClient

        config = client_config or ClientConfig(target=spec.server)
        t = time.perf_counter()
        client = EdgeClient(config)
        client.server_ready()
        connect_ms = (time.perf_counter() - t) * 1e3
    model = client.config.model_name if client is not None else "privsplit"

    def once(i: int) -> tuple[dict[str, float], int]:
        times: dict[str, float] = {}
        t = time.perf_counter()
        pixels = (pre.decode_bytes(data) if frame is None else pre.frame(frame))[None]
        t1 = time.perf_counter()
        x = pipe.input_tensor(pixels)
        t2 = time.perf_counter()
        raw = pipe.run_encoder(x)
        t3 = time.perf_counter()
        q = pipe.to_wire(raw, pixels)
        t4 = time.perf_counter()
        payload = (
            features_request(
                q,
                encoder_hash=pipe.encoder_hash,
                manifest_hash=pipe.manifest_hash,
                scale=pipe.wire.scale,
                zero_point=pipe.wire.zero_point,
                model_name=model,
                request_id=str(i),
            )
            .to_proto()
            .SerializeToString()
        )
        t5 = time.perf_counter()
        times.update(decode=t1 - t, preprocess=t2 - t1, encode=t3 - t2, quantize=t4 - t3, serialize=t5 - t4)
        if client is not None:
            pred = client.infer_payload(payload)
            times["rpc"] = time.perf_counter() - t5
            times["server"] = (pred.compute_us + pred.queue_us) / 1e6
        return {k: v * 1e3 for k, v in times.items()}, len(payload)

    try:
        first, nbytes = once(-1)
        first_ms = sum(v for k, v in first.items() if k != "server")
        for i in range(spec.warmup):
            once(i)
        rows: list[dict[str, float]] = []
        started = time.perf_counter()
        for i in range(spec.runs):
            rows.append(once(i)[0])
            if progress is not None:
                progress(i + 1, spec.runs)
            if spec.max_seconds is not None and time.perf_counter() - started >= spec.max_seconds:
                break
        c, h, w = pipe.wire.shape
        z = np.zeros((1, c, h, w), np.float32)
        float_bytes = len(
            features_request(
                z, encoder_hash=pipe.encoder_hash, manifest_hash=pipe.manifest_hash, model_name=model, request_id="0"
            )
            .to_proto()
            .SerializeToString()
        )
        pixels = pre.decode_bytes(data) if frame is None else pre.frame(frame)
    finally:
        if client is not None:
            client.close()
    totals = [sum(v for k, v in r.items() if k != "server") for r in rows]
    total = StageStats.of(totals)
    stages = {name: StageStats.of([r[name] for r in rows]) for name in STAGES if name in rows[0]}
    machine = machine_record()  # machine, CPU model, and the emulator when tools/emulated_pi says so
    info = {
        **machine,
        "timings": "emulated: not the latency of real hardware" if machine["emulated"] else "native",
        "system": platform.system(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_count": __import__("os").cpu_count(),
    }
    result = BenchResult(
        spec=spec,
        runtime=pipe.runtime.name.value,
        encoder=pipe.encoder,
        bundle_version=pipe.bundle.version,
        input_desc=desc,
        init_ms=round(init_ms, 3),
        connect_ms=None if connect_ms is None else round(connect_ms, 3),
        first_ms=round(first_ms, 3),
        runs=len(rows),
        mean_ms=total.mean_ms,
        p50_ms=total.p50_ms,
        p90_ms=total.p90_ms,
        p99_ms=total.p99_ms,
        peak_rss_mb=round(peak_rss_mb(), 1),
        stages=stages,
        bytes_per_request=nbytes,
        bytes_float32_request=float_bytes,
        bytes_input_jpeg=_jpeg_bytes(pixels),
        feature_bytes=int(c * h * w),
        platform=info,
        samples_ms=tuple(round(t, 4) for t in totals),
    )
    pipe.close()
    return result
