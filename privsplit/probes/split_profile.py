"""Where to split (Neurosurgeon-style, with a privacy column): per candidate split of the run's
architecture, the device latency of the encoder prefix, the server latency of the rest, the bytes on
the wire, and a cheap leakage indicator; then the split to use for an uplink bandwidth and budget.

For split ``k`` the prefix is the architecture's encoder at ``k`` blocks (blocks + the 1x1 bottleneck
to ``feature_channels``, what a device would run after training at ``k``); its latency does not depend
on weights, so fresh modules are timed (``runtime``: onnxruntime on an exported prefix, closest to a
device, or torch eager). Bytes are the serialised int8 request of the features at ``k``.

The leakage indicator is the bias-corrected squared distance correlation (Szekely & Rizzo 2014;
NoPeek uses distance correlation the same way) between the
input images and the *trained* network's activations at cut ``k`` on holdout images (the run's own
encoder up to its split, then its server blocks), and, when the run has a private attribute, the
balanced accuracy of a logistic-regression probe on channel-pooled activations beside its chance.
It indicates how much of the input a cut carries; it is not the full attribute / reconstruction probe
(``privsplit probe``), and a model re-trained adversarially at ``k`` would leak less.

Suggestion: minimise ``device + uplink + server`` (Neurosurgeon) when no budget is given; with
``budget_ms``, the split with the lowest leakage indicator among those within the budget (indicators
within 0.01 of the lowest count as ties: the fastest of them); when none fits, the fastest, flagged
``within_budget: false``.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np

from privsplit.errors import ConfigError
from privsplit.results import check_schema, from_dict, read_json, save_json, to_dict

PROFILE_SCHEMA_VERSION = 1
_HINT = "re-run `privsplit split-profile RUN --json FILE`"
_PROJECT_DIM = 1024  # activations are randomly projected to this many dims for distances (JL lemma)
_CHUNK = 32
LEAKAGE_TIE = 0.01  # leakage indicators this close count as equal; the faster split wins


class SplitRuntime(str, Enum):
    ONNXRUNTIME = "onnxruntime"
    TORCH = "torch"


@dataclass(frozen=True)
class SplitProfileSpec:
    bandwidth_mbps: float = 10.0
    budget_ms: float | None = None
    rtt_ms: float = 0.0  # network round trip added to every split
    runtime: SplitRuntime = SplitRuntime.ONNXRUNTIME
    threads: int = 1
    warmup: int = 10  # unmeasured calls per module before timing (as `privsplit edge bench`)
    runs: int = 100  # timed calls per module, interleaved across modules in ROUNDS rounds; the median is reported
    samples: int = 256  # holdout images for the leakage indicator
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.bandwidth_mbps > 0:
            raise ConfigError(f"--bandwidth-mbps must be > 0, got {self.bandwidth_mbps}")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ConfigError(f"--budget-ms must be > 0, got {self.budget_ms}")
        if self.threads < 1 or self.runs < 1 or self.samples < 8 or self.rtt_ms < 0 or self.warmup < 0:
            raise ConfigError("need threads >= 1, warmup >= 0, runs >= 1, samples >= 8 and rtt >= 0")

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> SplitProfileSpec:
        return from_dict(cls, data)


@dataclass(frozen=True)
class SplitRow:
    split: int
    trained: bool  # the run's own split
    feature_shape: tuple[int, int, int]
    request_bytes: int
    device_ms: float  # p50 of the encoder prefix
    server_ms: float  # p50 of the server layers after it (this machine)
    uplink_ms: float
    total_ms: float
    dcor: float  # bias-corrected squared distance correlation of input and activation (leakage indicator)
    private_balanced_accuracy: float | None

    def to_json(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> SplitRow:
        return from_dict(cls, data)


@dataclass(frozen=True)
class SplitProfile:
    run: str
    arch: str
    image_size: int
    spec: SplitProfileSpec
    rows: tuple[SplitRow, ...]
    suggested: int
    within_budget: bool
    reason: str
    private_chance: float | None

    def row(self, split: int) -> SplitRow:
        return next(r for r in self.rows if r.split == split)

    def to_json(self) -> dict:
        return {"schema_version": PROFILE_SCHEMA_VERSION, **to_dict(self)}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "split profile") -> SplitProfile:
        return from_dict(cls, check_schema(data, version=PROFILE_SCHEMA_VERSION, source=source, hint=_HINT))

    def save(self, path: str | Path) -> None:
        save_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SplitProfile:
        return cls.from_json(read_json(path, what="a split profile", hint=_HINT), source=str(path))

    def summary(self) -> str:
        s = self.spec
        priv = self.private_chance is not None
        head = (
            f"{'split':>5} {'features':>12} {'bytes':>7} {'device':>8} "
            f"{'uplink':>8} {'server':>8} {'total':>8} {'dCor²':>6}" + (" private" if priv else "")
        )
        lines = [
            f"split profile of {self.run} ({self.arch}, {self.image_size} px) "
            f"on {s.runtime.value}, {s.threads} thread(s); "
            f"uplink {s.bandwidth_mbps:g} Mbit/s, rtt {s.rtt_ms:g} ms"
            + (f", budget {s.budget_ms:g} ms" if s.budget_ms else ""),
            head,
        ]
        for r in self.rows:
            mark = ("*" if r.split == self.suggested else " ") + ("t" if r.trained else " ")
            shape = "x".join(map(str, r.feature_shape))
            line = (
                f"{r.split:>3}{mark} {shape:>12} {r.request_bytes:>7} {r.device_ms:>8.3f} {r.uplink_ms:>8.3f} "
                f"{r.server_ms:>8.3f} {r.total_ms:>8.3f} {r.dcor:>6.3f}"
            )
            lines.append(line + (f" {r.private_balanced_accuracy:>7.3f}" if priv else ""))
        lines.append(
            f"(ms: median of {s.runs} runs per module after {s.warmup} warm-up runs, interleaved; * suggested, "
            "t the run's split" + (f"; private-attribute chance {self.private_chance:.3f})" if priv else ")")
        )
        lines.append(f"suggested split {self.suggested}: {self.reason}")
        return "\n".join(lines)


# ---- latency ------------------------------------------------------------------------------------------
ROUNDS = 5  # timed runs are spread over this many rounds through all modules


def median_latencies_ms(calls: list, *, warmup: int, runs: int, rounds: int = ROUNDS) -> list[float]:
    """Median milliseconds per call of each of ``calls``, measured like ``privsplit edge bench``.

    Every call is first warmed up ``warmup`` times (one-time allocation, lazy initialisation, caches); the
    ``runs`` timed calls of each are then interleaved in ``rounds`` rounds through all of them, so a burst of
    load on the machine lands on every module alike instead of on whichever was being timed, and the median
    ignores the outliers that remain.
    """
    for fn in calls:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in calls]
    rounds = max(1, min(rounds, runs))
    for r in range(rounds):
        n = runs // rounds + (1 if r < runs % rounds else 0)
        for fn, times in zip(calls, samples):
            for _ in range(n):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
    return [float(np.median(times) * 1e3) for times in samples]


def _timer(module, shape: tuple[int, ...], spec: SplitProfileSpec, path: Path):
    """A no-argument call running ``module`` once on a zero batch of one, in the spec's runtime."""
    import torch

    module = module.eval()
    x = torch.zeros((1, *shape))
    if spec.runtime is SplitRuntime.TORCH:

        def call():
            previous = torch.get_num_threads()
            torch.set_num_threads(spec.threads)
            try:
                with torch.no_grad():
                    module(x)
            finally:
                torch.set_num_threads(previous)

        return call
    from privsplit.errors import require

    ort = require("onnxruntime", package="onnxruntime", extra="export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"]
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = spec.threads, 1, 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


def _request_bytes(shape: tuple[int, int, int]) -> int:
    from privsplit.proto.wire import features_request

    request = features_request(
        np.zeros((1, *shape), np.int8), encoder_hash="0" * 64, scale=0.05, zero_point=0, request_id="0"
    )
    return len(request.to_proto().SerializeToString())


# ---- leakage ------------------------------------------------------------------------------------------
def distance_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Bias-corrected squared distance correlation of paired rows of ``x`` (n, p) and ``y`` (n, q)
    (Szekely & Rizzo 2014, U-centred): 1 for a similarity transform, about 0 (it can dip below) for
    independent samples, unbiased also in high dimension."""
    from sklearn.metrics import pairwise_distances

    n = len(x)
    if n < 4:
        raise ConfigError("distance correlation needs at least 4 samples")

    def u_centred(z):
        d = pairwise_distances(np.asarray(z, np.float64))
        rows = d.sum(1, keepdims=True) / (n - 2)
        out = d - rows - rows.T + d.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(out, 0.0)
        return out

    a, b = u_centred(x), u_centred(y)
    dcov, vx, vy = (a * b).sum(), (a * a).sum(), (b * b).sum()
    return float(dcov / np.sqrt(vx * vy)) if vx > 0 and vy > 0 else 0.0


def _cut_modules(model) -> list:
    """The trained network as a sequence of cut points: ``modules[k - 1]`` maps images to the
    activation at split ``k`` (the run's own split yields its features, bottleneck included)."""
    from torch import nn

    enc, body = model.encoder, model.head.body
    split = len(enc.blocks)
    cuts = [nn.Sequential(*enc.blocks[:k]) for k in range(1, split)]
    cuts.append(enc)
    for j in range(1, len(body)):
        cuts.append(nn.Sequential(enc, *body[: j + 1]))
    return cuts


def _activations(module, images: np.ndarray, preprocess, projector) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(images), _CHUNK):
            z = module(preprocess(images[s : s + _CHUNK])).flatten(1).numpy()
            out.append(projector(z))
    return np.concatenate(out)


def _projector(dim: int, seed: int):
    if dim <= _PROJECT_DIM:
        return lambda z: z.astype(np.float64)
    from sklearn.random_projection import SparseRandomProjection

    proj = SparseRandomProjection(n_components=_PROJECT_DIM, random_state=seed).fit(np.zeros((1, dim), np.float32))
    return lambda z: proj.transform(z).astype(np.float64)


def _private_probe(acts_pooled: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, xte, ytr, yte = train_test_split(acts_pooled, labels, test_size=0.5, random_state=seed, stratify=labels)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(xtr, ytr)
    return float(balanced_accuracy_score(yte, clf.predict(xte)))


# ---- the profile -----------------------------------------------------------------------------------------
def _candidates(cfg) -> list[int]:
    from privsplit.models.config import Arch

    if cfg.arch is Arch.MOBILENET_V2:
        from privsplit.models.mobilenet import NUM_BLOCKS

        top = NUM_BLOCKS - 1
    else:
        top = cfg.split + cfg.head_blocks
    out = []
    for k in range(1, top + 1):
        try:
            replace(cfg, split=k)
        except ConfigError:
            break
        out.append(k)
    return out


def suggest(rows: list[SplitRow], spec: SplitProfileSpec) -> tuple[int, bool, str]:
    fastest = min(rows, key=lambda r: (r.total_ms, r.split))
    if spec.budget_ms is None:
        return fastest.split, True, f"lowest end-to-end latency ({fastest.total_ms:.2f} ms; no budget given)"
    fits = [r for r in rows if r.total_ms <= spec.budget_ms]
    if not fits:
        return fastest.split, False, f"no split fits {spec.budget_ms:g} ms; the fastest takes {fastest.total_ms:.2f} ms"
    floor = min(r.dcor for r in fits)
    best = min((r for r in fits if r.dcor <= floor + LEAKAGE_TIE), key=lambda r: (r.total_ms, r.split))
    return (
        best.split,
        True,
        (
            f"lowest leakage indicator (dCor² {best.dcor:.3f}, within {LEAKAGE_TIE} of the lowest, then "
            f"fastest) of the {len(fits)} split(s) within {spec.budget_ms:g} ms ({best.total_ms:.2f} ms)"
        ),
    )


def profile_splits(run, spec: SplitProfileSpec = SplitProfileSpec(), *, progress: bool = False) -> SplitProfile:
    """Profile every candidate split of ``run`` (a run folder or path); see the module doc."""
    import torch

    from privsplit.data import Part
    from privsplit.models import feature_shape
    from privsplit.models.split import Encoder, ServerLayers
    from privsplit.run import RunFolder

    run = run if isinstance(run, RunFolder) else RunFolder(run)
    model = run.load_split_model().eval()
    cfg = model.config
    data, split = run.dataset(), run.split()
    rng = np.random.default_rng(spec.seed)
    holdout = split[Part.HOLDOUT]
    idx = np.sort(rng.choice(holdout, size=min(spec.samples, len(holdout)), replace=False))
    images = data.images[idx]
    torch.manual_seed(spec.seed)
    x_dim = int(np.prod(images.shape[1:]))
    x_proj = _projector(x_dim, spec.seed)(images.reshape(len(images), -1).astype(np.float32))
    private = data.private_labels[idx] if data.private is not None else None
    chance = None if private is None else 1.0 / len(data.classes[data.private])
    cuts = _cut_modules(model)
    rows = []
    candidates = _candidates(cfg)
    image = (cfg.in_channels, cfg.image_size, cfg.image_size)
    with tempfile.TemporaryDirectory(prefix="split-profile-") as tmp:
        calls = []
        for k in candidates:  # every module first, then all timed together (interleaved, after warm-up)
            cfg_k = replace(cfg, split=k)
            calls.append(_timer(Encoder(cfg_k), image, spec, Path(tmp) / f"device{k}.onnx"))
            calls.append(_timer(ServerLayers(cfg_k), feature_shape(cfg_k), spec, Path(tmp) / f"server{k}.onnx"))
        latencies = median_latencies_ms(calls, warmup=spec.warmup, runs=spec.runs)
        for i, k in enumerate(candidates):
            shape = feature_shape(replace(cfg, split=k))
            device_ms, server_ms = latencies[2 * i], latencies[2 * i + 1]
            nbytes = _request_bytes(shape)
            uplink_ms = nbytes * 8 / (spec.bandwidth_mbps * 1e6) * 1e3
            cut = cuts[k - 1]
            with torch.no_grad():
                probe_shape = cut(model.preprocess(images[:1])).shape
            acts = _activations(cut, images, model.preprocess, _projector(int(np.prod(probe_shape[1:])), spec.seed + k))
            dcor = distance_correlation(x_proj, acts)
            priv = None
            if private is not None:
                with torch.no_grad():
                    pooled = []
                    for s in range(0, len(images), _CHUNK):
                        a = cut(model.preprocess(images[s : s + _CHUNK]))
                        pooled.append(torch.cat([a.mean((2, 3)), a.std((2, 3))], 1).numpy())
                priv = _private_probe(np.concatenate(pooled), private, spec.seed)
            rows.append(
                SplitRow(
                    split=k,
                    trained=k == cfg.split,
                    feature_shape=tuple(shape),
                    request_bytes=nbytes,
                    device_ms=round(device_ms, 4),
                    server_ms=round(server_ms, 4),
                    uplink_ms=round(uplink_ms, 4),
                    total_ms=round(device_ms + uplink_ms + server_ms + spec.rtt_ms, 4),
                    dcor=round(dcor, 4),
                    private_balanced_accuracy=None if priv is None else round(priv, 4),
                )
            )
            if progress:
                import sys

                print(
                    f"split-profile: split {k}: device {device_ms:.3f} ms, {nbytes} B, dCor² {dcor:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
    chosen, ok, reason = suggest(rows, spec)
    return SplitProfile(
        run=run.path.name,
        arch=cfg.arch.value,
        image_size=cfg.image_size,
        spec=spec,
        rows=tuple(rows),
        suggested=chosen,
        within_budget=ok,
        reason=reason,
        private_chance=chance,
    )
