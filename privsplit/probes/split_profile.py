"""Where to split (Neurosurgeon-style, with privacy columns): per candidate split of the run's
architecture, the device latency of the encoder prefix, the server latency of the rest, the bytes on
the wire, the leakage measured by trained attackers and a cheap leakage indicator; the splits ranked by measured
leakage, and the split to use for an uplink bandwidth and budget.

For split ``k`` the prefix is the architecture's encoder at ``k`` blocks (blocks + the 1x1 bottleneck
to ``feature_channels``, what a device would run after training at ``k``); its latency does not depend
on weights, so fresh modules are timed (``runtime``: onnxruntime on an exported prefix, closest to a
device, or torch eager). Bytes are the serialised int8 request of the features at ``k``.

Measured leakage (:mod:`privsplit.probes.split_leakage`): on the *trained* network's activations at cut ``k`` (the
run's own encoder up to its split, then its server blocks; no channel noise), trained logistic-regression and MLP
attackers on a budget answer the export gate's questions, each read as an excess over its floor and null: the
private attribute, identity linkage (where the data has identities) and the largest excess of every other
attribute. A split's **leakage** is the largest of these excesses. A model re-trained adversarially at ``k`` would
leak less: the profile measures the run's network as it is.

The leakage indicator kept beside it is the bias-corrected squared distance correlation (Szekely & Rizzo 2014;
NoPeek uses it the same way) between the input images and those activations on holdout images: how much of the
input a cut carries, with no attacker trained.

Ranking (``rank``, 1 = least leakage): by measured leakage, then dCor², then end-to-end latency; when the data has
no label to attack, by dCor², then latency.

Suggestion: minimise ``device + uplink + server`` (Neurosurgeon) when no budget is given; with
``budget_ms``, the split with the lowest measured leakage (dCor² when none is measured) among those within the
budget (values within 0.01 of the lowest count as ties: the fastest of them); when none fits, the fastest, flagged
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

PROFILE_SCHEMA_VERSION = 2  # 2: measured leakage per split (excesses of trained attackers) and the rank
PROFILE_KIND = "split-profile"
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
    attack_samples: int = 1000  # trained attackers: training (attacker part) and test (holdout) images, each at most
    linkage_images: int = 2000  # images of people with 2+ images for the linkage attackers, at most
    attributes: str = "all"  # other attributes attacked: 'all', 'none' or A,B
    attack_epochs: int = 20  # the MLP attacker's budget
    measure_leakage: bool = True  # False: dCor² only (no attacker trained)

    def __post_init__(self) -> None:
        if not self.bandwidth_mbps > 0:
            raise ConfigError(f"--bandwidth-mbps must be > 0, got {self.bandwidth_mbps}")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ConfigError(f"--budget-ms must be > 0, got {self.budget_ms}")
        if self.threads < 1 or self.runs < 1 or self.samples < 8 or self.rtt_ms < 0 or self.warmup < 0:
            raise ConfigError("need threads >= 1, warmup >= 0, runs >= 1, samples >= 8 and rtt >= 0")
        if self.attack_samples < 20 or self.linkage_images < 8 or self.attack_epochs < 1:
            raise ConfigError("need --attack-samples >= 20, linkage images >= 8 and attack epochs >= 1")

    @property
    def budget(self):
        from privsplit.probes.split_leakage import AttackBudget

        return AttackBudget(
            samples=self.attack_samples,
            linkage_images=self.linkage_images,
            attributes=self.attributes,
            epochs=self.attack_epochs,
        )

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
    private_balanced_accuracy: float | None  # the best trained attacker's (None: no private attribute)
    private_floor: float | None = None  # max(chance, task floor)
    private_null: float | None = None  # the attackers' permutation null
    private_excess: float | None = None  # best - max(floor, null)
    linkage_auc: float | None = None  # best verification AUC (None: no identities)
    linkage_null: float | None = None
    linkage_excess: float | None = None  # AUC - max(0.5, null)
    attribute_worst: str | None = None  # the other attribute with the largest excess
    attribute_balanced_accuracy: float | None = None
    attribute_floor: float | None = None
    attribute_null: float | None = None
    attribute_excess: float | None = None
    rank: int = 0  # 1 = least measured leakage (see the module doc)

    @property
    def leakage(self) -> float | None:
        """The largest measured excess of the three questions (None when none could be asked)."""
        found = [v for v in (self.private_excess, self.linkage_excess, self.attribute_excess) if v is not None]
        return max(found) if found else None

    def rank_key(self) -> tuple:
        return (self.leakage if self.leakage is not None else self.dcor, self.dcor, self.total_ms, self.split)

    def to_json(self) -> dict:
        return {**to_dict(self), "leakage": self.leakage}

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
        body = {**to_dict(self), "rows": [r.to_json() for r in self.rows]}
        return {"schema_version": PROFILE_SCHEMA_VERSION, "kind": PROFILE_KIND, **body}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "split profile") -> SplitProfile:
        if isinstance(data, dict) and data.get("schema_version") == 1 and "kind" not in data:
            # version 1 (before measured leakage): no kind, no excess columns; its rows load unranked (rank 0)
            data = {**data, "schema_version": PROFILE_SCHEMA_VERSION, "kind": PROFILE_KIND}
        data = check_schema(data, version=PROFILE_SCHEMA_VERSION, kind=PROFILE_KIND, source=source, hint=_HINT)
        rows = tuple(SplitRow.from_json(r) for r in data["rows"])
        return from_dict(cls, {**data, "rows": rows})

    def save(self, path: str | Path) -> None:
        save_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SplitProfile:
        return cls.from_json(read_json(path, what="a split profile", hint=_HINT), source=str(path))

    def summary(self) -> str:
        s = self.spec

        def col(v, spec="+.3f"):
            return "-" if v is None else format(v, spec)

        head = (
            f"{'split':>5} {'features':>12} {'bytes':>7} {'device':>8} {'uplink':>8} {'server':>8} {'total':>8} "
            f"{'dCor²':>6} {'private':>8} {'linkage':>8} {'other':>8} {'leakage':>8} {'rank':>4}  worst other"
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
            lines.append(
                f"{r.split:>3}{mark} {shape:>12} {r.request_bytes:>7} {r.device_ms:>8.3f} {r.uplink_ms:>8.3f} "
                f"{r.server_ms:>8.3f} {r.total_ms:>8.3f} {r.dcor:>6.3f} {col(r.private_excess):>8} "
                f"{col(r.linkage_excess):>8} {col(r.attribute_excess):>8} {col(r.leakage):>8} {r.rank:>4}  "
                f"{r.attribute_worst or '-'}"
            )
        lines.append(
            f"(ms: median of {s.runs} runs per module after {s.warmup} warm-up runs, interleaved; * suggested, "
            "t the run's split; private / linkage / other: excess of the best trained attacker over max(chance, task "
            "floor, null) (linkage: AUC over max(0.5, null)) on the noise-free activations; leakage: the largest; "
            "rank 1 = least leakage"
            + (f"; private-attribute chance {self.private_chance:.3f})" if self.private_chance is not None else ")")
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


def _measured_columns(private, linkage, worst) -> dict:
    """SplitRow fields from :func:`privsplit.probes.split_leakage.measure_cut`'s readings (rounded to 4 places)."""

    def r4(v):
        return None if v is None else round(float(v), 4)

    out: dict = {}
    if private is not None:
        out.update(
            private_balanced_accuracy=r4(private.best),
            private_floor=r4(private.floor),
            private_null=r4(private.null),
            private_excess=r4(private.excess),
        )
    if linkage is not None:
        out.update(linkage_auc=r4(linkage.best), linkage_null=r4(linkage.null), linkage_excess=r4(linkage.excess))
    if worst is not None:
        name, got = worst
        out.update(
            attribute_worst=name,
            attribute_balanced_accuracy=r4(got.best),
            attribute_floor=r4(got.floor),
            attribute_null=r4(got.null),
            attribute_excess=r4(got.excess),
        )
    return out


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
    measured = all(r.leakage is not None for r in fits)
    value = (lambda r: r.leakage) if measured else (lambda r: r.dcor)
    floor = min(value(r) for r in fits)
    best = min((r for r in fits if value(r) <= floor + LEAKAGE_TIE), key=lambda r: (r.total_ms, r.split))
    what = f"measured leakage (excess {best.leakage:+.3f}" if measured else f"leakage indicator (dCor² {best.dcor:.3f}"
    return (
        best.split,
        True,
        (
            f"lowest {what}, within {LEAKAGE_TIE} of the lowest, then "
            f"fastest) of the {len(fits)} split(s) within {spec.budget_ms:g} ms ({best.total_ms:.2f} ms)"
        ),
    )


def ranked(rows: list[SplitRow]) -> list[SplitRow]:
    """``rows`` with ``rank`` filled: 1 = the least measured leakage (see the module doc), in split order."""
    order = sorted(rows, key=lambda r: r.rank_key())
    rank = {r.split: i + 1 for i, r in enumerate(order)}
    return [replace(r, rank=rank[r.split]) for r in rows]


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
    chance = None if data.private is None else 1.0 / len(data.classes[data.private])
    cuts = _cut_modules(model)
    attack_spec, sets, attributes = None, None, ()
    if spec.measure_leakage:
        from privsplit.probes.split_leakage import AttackSets, other_attributes

        budget = spec.budget
        attack_spec = budget.spec(spec.seed)
        sets = AttackSets.draw(data, split, budget, spec.seed)
        attributes = other_attributes(data, spec.attributes)
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
            measured = {}
            if sets is not None:
                from privsplit.probes.split_leakage import measure_cut

                project = _projector(int(np.prod(probe_shape[1:])), spec.seed + k)

                def at_cut(rows_, cut=cut, project=project):
                    return _activations(cut, data.images[rows_], model.preprocess, project).astype(np.float32)

                private, linkage, worst = measure_cut(
                    at_cut, data, split, sets, attributes=attributes, spec=attack_spec, seed=spec.seed
                )
                measured = _measured_columns(private, linkage, worst)
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
                    private_balanced_accuracy=measured.pop("private_balanced_accuracy", None),
                    **measured,
                )
            )
            if progress:
                import sys

                leak = rows[-1].leakage
                print(
                    f"split-profile: split {k}: device {device_ms:.3f} ms, {nbytes} B, dCor² {dcor:.3f}"
                    + ("" if leak is None else f", measured leakage {leak:+.3f}"),
                    file=sys.stderr,
                    flush=True,
                )
    rows = ranked(rows)
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
