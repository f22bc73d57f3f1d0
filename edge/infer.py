"""Inputs in, one result per input out: the device pipeline and the client together.

:func:`infer_inputs` runs files, folders or frames through :class:`~privsplit.edge.pipeline.EdgePipeline`
and sends the features to the cloud (unary requests of ``batch_size`` rows, or one stream);
:func:`stream_frames` does the same lazily for an endless camera iterator. An input that cannot be
decoded and a request the server refuses each become an :class:`InferResult` with its ``error``.
The server is asked once per call (:meth:`EdgeClient.check`, within the call deadline) before any input
is decoded; when it cannot be reached, or stops being reachable part-way, the inputs not sent are
marked *skipped* (``error`` starts with :data:`SKIPPED`) and :attr:`InferReport.stopped_by` says why
once: nothing is dropped silently and no input waits out its own retries or deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privsplit.edge.client import EdgeClient, ServerUnavailable
from privsplit.edge.pipeline import EdgePipeline
from privsplit.errors import PrivsplitError
from privsplit.proto.status import Code, ProtocolError
from privsplit.proto.wire import features_request
from privsplit.results import check_schema, from_dict, read_json, save_json, to_dict

INFER_SCHEMA_VERSION = 1
_HINT = "re-run `privsplit edge infer ... --json FILE`"
SKIPPED = "skipped: not sent"


def _stops_run(exc: PrivsplitError) -> bool:
    """The server cannot be reached (or never answers): later inputs would fail the same way."""
    return isinstance(exc, ServerUnavailable) or (isinstance(exc, ProtocolError) and exc.code is Code.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class InferResult:
    source: str
    label: int | None = None
    class_name: str | None = None
    confidence: float | None = None
    probs: tuple[float, ...] | None = None
    error: str | None = None
    latency_ms: float | None = None  # encode + round trip of the request this input travelled in

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def skipped(self) -> bool:
        """Never sent: the server was unreachable (see :attr:`InferReport.stopped_by`)."""
        return self.error is not None and self.error.startswith(SKIPPED)

    def to_json(self) -> dict:
        data = to_dict(self)
        return {k if k != "class_name" else "class": v for k, v in data.items()}  # the JSON key is "class"

    @classmethod
    def from_json(cls, data: dict) -> InferResult:
        return from_dict(cls, {**data, "class_name": data.get("class")})


@dataclass(frozen=True)
class InferReport:
    pipeline: dict  # EdgePipeline.describe()
    server: str
    results: tuple[InferResult, ...]
    stopped_by: str | None = None  # why the remaining inputs were skipped (the server's one error), if they were

    @property
    def failed(self) -> int:
        """Inputs that were tried and failed (skipped ones aside)."""
        return sum(not r.ok and not r.skipped for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.skipped for r in self.results)

    def to_json(self) -> dict:
        return to_dict(
            {
                "schema_version": INFER_SCHEMA_VERSION,
                "pipeline": self.pipeline,
                "server": self.server,
                "results": [r.to_json() for r in self.results],
                "failed": self.failed,
                "skipped": self.skipped,
                "stopped_by": self.stopped_by,
            }
        )

    @classmethod
    def from_json(cls, data: dict, *, source: str = "infer report") -> InferReport:
        data = check_schema(data, version=INFER_SCHEMA_VERSION, source=source, hint=_HINT)
        return from_dict(cls, {**data, "results": tuple(InferResult.from_json(r) for r in data["results"])})

    def save(self, path: Path) -> None:
        save_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> InferReport:
        return cls.from_json(read_json(path, what="an infer report", hint=_HINT), source=str(path))

    def summary(self) -> str:
        width = max([len("input")] + [len(r.source) for r in self.results])
        lines = [f"{'input':<{width}}  {'class':<12} {'conf':>6}  {'ms':>7}  error"]
        for r in self.results:
            if r.ok:
                lines.append(
                    f"{r.source:<{width}}  {str(r.class_name):<12} "
                    f"{r.confidence if r.confidence is not None else float('nan'):>6.3f}  {r.latency_ms:>7.2f}"
                )
            elif r.skipped:
                lines.append(f"{r.source:<{width}}  {'-':<12} {'-':>6}  {'-':>7}  skipped")
            else:
                lines.append(f"{r.source:<{width}}  {'-':<12} {'-':>6}  {'-':>7}  {r.error}")
        p = self.pipeline
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        if self.stopped_by:
            lines.append(f"stopped: {self.stopped_by}")
        ok = len(self.results) - self.failed - self.skipped
        lines.append(
            f"{ok}/{len(self.results)} ok{skipped}; encoder {p['encoder']} on {p['runtime']} "
            f"({p['threads']} thread(s)), bundle {p['version']}, server {self.server}"
        )
        return "\n".join(lines)


def _results(pred, sources: Sequence[str], classes: Sequence[str], latency_ms: float) -> list[InferResult]:
    out = []
    for i, src in enumerate(sources):
        label = int(pred.label[i])
        probs = None if pred.probs is None else tuple(float(v) for v in pred.probs[i])
        out.append(
            InferResult(
                source=src,
                label=label,
                class_name=classes[label] if 0 <= label < len(classes) else str(label),
                confidence=None if probs is None else probs[label],
                probs=probs,
                latency_ms=round(latency_ms, 3),
            )
        )
    return out


def _payload(
    pipeline: EdgePipeline, pixels: np.ndarray, *, model_name: str, request_id: str, label_only: bool
) -> bytes:
    wire = pipeline.encode_pixels(pixels)
    request = features_request(
        wire.data,
        encoder_hash=wire.encoder_hash,
        manifest_hash=wire.manifest_hash,
        scale=wire.scale,
        zero_point=wire.zero_point,
        model_name=model_name,
        request_id=request_id,
        label_only=label_only,
    )
    return request.to_proto().SerializeToString()


def infer_inputs(
    pipeline: EdgePipeline,
    client: EdgeClient,
    inputs: Sequence[str | Path] | np.ndarray,
    *,
    batch_size: int = 1,
    stream: bool = False,
    label_only: bool = False,
) -> InferReport:
    """Every input -> an :class:`InferResult` (prediction or error), in input order. Files are decoded
    one request (``batch_size`` inputs) at a time."""
    items = pipeline.expand(inputs)
    classes = pipeline.bundle.classes
    slots: dict[int, InferResult] = {
        i: InferResult(source=it.source, error=it.error) for i, it in enumerate(items) if not it.ok
    }
    good = [i for i, it in enumerate(items) if it.ok]
    chunks = [good[s : s + batch_size] for s in range(0, len(good), max(1, batch_size))]
    model = client.config.model_name
    groups: dict[str, list[int]] = {}  # request id -> the inputs it carries
    starts: dict[str, float] = {}

    def requests() -> Iterator[tuple[str, bytes]]:
        """Decode a chunk, record decode errors, encode the rest into one request."""
        for g, chunk in enumerate(chunks):
            started = time.perf_counter()
            loaded = {i: pipeline.load(items[i]) for i in chunk}
            slots.update({i: InferResult(source=it.source, error=it.error) for i, it in loaded.items() if not it.ok})
            idx = [i for i in chunk if loaded[i].ok]
            if not idx:
                continue
            rid = f"req-{g}"
            groups[rid], starts[rid] = idx, started
            pixels = np.stack([p for i in idx if (p := loaded[i].pixels) is not None])
            yield rid, _payload(pipeline, pixels, model_name=model, request_id=rid, label_only=label_only)

    def fill(rid: str, pred=None, error: str | None = None) -> None:
        idx = groups[rid]
        if error is not None:
            slots.update({i: InferResult(source=items[i].source, error=error) for i in idx})
            return
        latency = (time.perf_counter() - starts[rid]) * 1e3
        slots.update(zip(idx, _results(pred, [items[i].source for i in idx], classes, latency)))

    stopped_by: str | None = None
    if good:
        try:
            client.check()
        except ProtocolError as exc:  # unreachable, silent or refusing every call: nothing is sent
            stopped_by = str(exc)
    if stopped_by is None and stream:
        try:
            for reply in client.stream(requests()):
                fill(reply.request_id, reply.prediction, reply.error)
        except PrivsplitError as exc:
            stopped_by = str(exc)
            for rid, idx in list(groups.items()):
                if idx[0] not in slots:
                    fill(rid, error=str(exc))
    elif stopped_by is None:
        for rid, payload in requests():
            try:
                fill(rid, client.infer_payload(payload))
            except PrivsplitError as exc:
                fill(rid, error=str(exc))
                if _stops_run(exc):
                    stopped_by = str(exc)
                    break
    skip = f"{SKIPPED} (the run stopped: {client.config.target} did not answer or refused)" if stopped_by else SKIPPED
    for i in good:  # inputs never sent
        slots.setdefault(i, InferResult(source=items[i].source, error=skip))
    return InferReport(
        pipeline=pipeline.describe(),
        server=client.config.target,
        results=tuple(slots[i] for i in range(len(items))),
        stopped_by=stopped_by,
    )


def stream_frames(
    pipeline: EdgePipeline,
    client: EdgeClient,
    frames: Iterable[np.ndarray],
    *,
    bgr: bool = False,
    label_only: bool = False,
) -> Iterator[InferResult]:
    """Camera-rate mode: each ``uint8 (H, W, C)`` frame is encoded as the stream asks for it and sent on
    one ``ModelStreamInfer`` stream; yields one result per frame, in order (``source`` = ``frame[i]``).
    A frame that cannot be preprocessed yields its error without being sent."""
    classes = pipeline.bundle.classes
    model = client.config.model_name
    starts: dict[str, float] = {}
    early: list[InferResult] = []  # preprocessing errors, yielded in frame order with the replies

    def requests():
        for i, frame in enumerate(frames):
            rid = f"frame[{i}]"
            starts[rid] = time.perf_counter()
            try:
                pixels = pipeline.preprocessor.frame(frame, bgr=bgr)[None]
            except PrivsplitError as exc:
                early.append(InferResult(source=rid, error=str(exc)))
                continue
            yield rid, _payload(pipeline, pixels, model_name=model, request_id=rid, label_only=label_only)

    for reply in client.stream(requests()):
        index = int(reply.request_id[6:-1])
        while early and int(early[0].source[6:-1]) < index:
            yield early.pop(0)
        if reply.ok:
            yield _results(
                reply.prediction, [reply.request_id], classes, (time.perf_counter() - starts[reply.request_id]) * 1e3
            )[0]
        else:
            yield InferResult(source=reply.request_id, error=reply.error)
    yield from early
