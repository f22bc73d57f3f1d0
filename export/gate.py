"""Measuring the leakage gate at export (the record and the threshold: :mod:`privsplit.leakage_gate`).

Which artefacts are measured, and why the others are represented:

* **private attribute**: every artefact the export's feature probe ran on (its rows in the parity table), at no
  extra cost; the null is the probe's permutation null (the best of the same attackers' predictions against
  permuted holdout labels: the best-of-N chance level on this holdout);
* **linkage, every other attribute, repeated frames**: the default encoder (what a device runs) and every shipped
  artefact that no measured artefact represents. ``A`` represents ``B`` when their int8 wire codes on the parity
  holdout (same noise draw) are the same up to rounding (at least :attr:`GateBudget.agreement` of the codes equal,
  none more than one step apart), or, on a noisy wire, when the RMS difference of the codes is at most
  :attr:`GateBudget.noise_share` of the channel noise the operator still sees after averaging ``frames`` frames
  (``sigma / scale / sqrt(frames)`` steps): then what tells the two apart is buried under the noise every attacker
  faces. The record names every artefact's agreement figures.

Repeated frames (a camera streaming one still scene; the device's fresh noise): the artefact's noise-free output is
computed once and each of the 16 frames adds its own seeded draw of the channel noise before the int8 wire; the
attackers read the mean. A wire whose noise is keyed on the frame (``features.noise_keying: frame``) gives exact
repeats the same noise, so their mean is one frame and there is no separate reading; frames that differ (sensor
noise) key fresh draws again, which ``privsplit probe features --frames 16 --frame-jitter S`` measures.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace

import numpy as np

from privsplit.errors import DataError
from privsplit.export import measure
from privsplit.export.formats import ExportFormat
from privsplit.leakage_gate import GATE_FRAMES, GateQuestion, GateReading, GateRecord
from privsplit.noise_keying import NoiseKeying
from privsplit.progress import progress_bar


@dataclass(frozen=True)
class GateBudget:
    """How much the gate spends beyond the export's own probe."""

    frames: int = GATE_FRAMES  # the repeated-frames reading (1: none)
    agreement: float = 0.99  # share of equal wire codes (none more than 1 step apart) for "the same up to rounding"
    noise_share: float = 0.10  # or: RMS code difference within this share of the K-frame noise (noisy wires)
    sweep_attackers: tuple[str, ...] = ("logistic",)  # attackers of the other-attribute sweep (one fit each)
    sweep_max_attacker: int | None = 2000  # cap on the sweep's training images per attribute (seeded subsample)
    sweep_cs: tuple[float, ...] = (0.05,)  # the sweep's logistic C (one value: one fit per attribute, no CV)
    frames_attackers: tuple[str, ...] = ("logistic", "mlp")  # the private attribute's repeated-frames attackers


def _log(msg: str, enabled: bool) -> None:
    if enabled:
        import sys

        print(f"privsplit export: leakage gate: {msg}", file=sys.stderr, flush=True)


def wire_agreement(a: np.ndarray, b: np.ndarray, noise: np.ndarray, wire) -> tuple[float, int, float]:
    """(share of equal int8 wire codes, largest code difference, RMS code difference) of two artefacts' noise-free
    holdout outputs through the wire with the same noise."""
    qa = wire.quantize(a + noise).astype(np.int16)
    qb = wire.quantize(b + noise).astype(np.int16)
    diff = (qa - qb).astype(np.float64)
    return float(np.mean(diff == 0)), int(np.abs(diff).max()), float(np.sqrt(np.mean(diff**2)))


def frame_keyed(wire) -> bool:
    """Whether the wire's noise is keyed on the frame (``features.noise_keying: frame``): exact repeats then carry
    the same noise and their mean is one frame."""
    return NoiseKeying(wire.noise_keying) is NoiseKeying.FRAME


def represents(agreement: tuple[float, int, float], wire, budget: GateBudget, frames: int) -> bool:
    share, step, rms = agreement
    if share >= budget.agreement and step <= 1:
        return True
    noise_steps = wire.noise_sigma / wire.scale / np.sqrt(max(frames, 1))
    return wire.noise_sigma > 0 and rms <= budget.noise_share * noise_steps


class CachedWire:
    """One artefact's noise-free outputs on a dataset, computed once; encoders that add the device's noise per
    frame (fresh seeded draws) and average ``frames`` of them, keyed on the image bytes."""

    def __init__(self, art, images: np.ndarray, wire, *, progress: bool) -> None:
        chunks = []
        for s in progress_bar(range(0, len(images), 256), desc="gate encode", enabled=progress):
            chunks.append(art.encode(images[s : s + 256].astype(np.float32) / np.float32(255.0)))
        self.clean = np.concatenate(chunks).astype(np.float32)
        self.wire = wire
        self._row = {self._key(img): i for i, img in enumerate(images)}

    @staticmethod
    def _key(image: np.ndarray) -> bytes:
        return hashlib.blake2b(image.tobytes(), digest_size=16).digest()

    def features(self, rows: np.ndarray, *, frames: int, rng: np.random.Generator) -> np.ndarray:
        z = self.clean[rows]
        if self.wire.noise_sigma <= 0:
            return measure.through_wire(z, 0.0, self.wire)
        total = np.zeros(z.shape, dtype=np.float64)
        for _ in range(frames):
            noise = (self.wire.noise_sigma * rng.standard_normal(z.shape)).astype(np.float32)
            total += measure.through_wire(z, noise, self.wire)
        return (total / frames).astype(np.float32)

    def encoder(self, *, frames: int, seed: int):
        rng = np.random.default_rng(seed)

        def encode(images: np.ndarray) -> np.ndarray:
            try:
                rows = np.array([self._row[self._key(img)] for img in images])
            except KeyError:
                raise DataError("the leakage gate was asked to encode an image outside the run's dataset") from None
            return self.features(rows, frames=frames, rng=rng)

        return encode


def private_reading(leak: measure.Leakage, artefact: str, frames: int, max_excess) -> GateReading:
    return GateReading(
        question=GateQuestion.PRIVATE,
        artefact=artefact,
        frames=frames,
        best=float(leak.attribute_balanced_accuracy),
        floor=max(float(leak.attribute_chance), float(leak.attribute_task_floor)),
        null=leak.attribute_null,
        attacker=leak.attribute_attacker or "",
        max_excess=max_excess,
    )


def _other_attributes(data) -> tuple[str, ...]:
    from privsplit.probes.attribute_sweep import resolve_attributes

    try:
        names = resolve_attributes(data, "all")
    except Exception:  # no candidate at all
        return ()
    return tuple(n for n in names if n != data.private)


def _sweep(encode, data, split, names, *, seed: int, budget: GateBudget, progress: bool):
    """The largest other-attribute excess: (attribute, attacker, best, floor, null) of the worst attribute."""
    from privsplit.probes.feature_probe import encode_images, probe_features
    from privsplit.probes.feature_spec import FeatureProbeSpec

    spec = FeatureProbeSpec(
        attackers=budget.sweep_attackers,
        curve=(1.0,),
        pooled=False,
        reconstruction=False,
        null=False,
        max_attacker=budget.sweep_max_attacker,
        logistic_cs=budget.sweep_cs,
        cv_folds=2,
        seed=seed,
    )
    from privsplit.data import Part

    used = np.sort(np.concatenate([split[Part.ATTACKER], split[Part.HOLDOUT]]))
    feats = encode_images(encode, data.images[used], desc="gate encode (attributes)", progress=progress)
    lookup = {CachedWire._key(img): i for i, img in enumerate(data.images[used])}

    def shared(images: np.ndarray) -> np.ndarray:
        return feats[[lookup[CachedWire._key(img)] for img in images]]

    worst = None
    for name in progress_bar(names, desc="gate attributes", enabled=progress):
        attr = probe_features(shared, replace(data, private=name), split, spec=spec, progress=False).attribute
        assert attr is not None
        best = attr.best_score
        floor = max(attr.chance, attr.task_floor)
        row = (name, attr.best, best.balanced_accuracy, floor, attr.permutation_null_mean)
        baseline = max(floor, row[4] if row[4] is not None else floor)
        if worst is None or best.balanced_accuracy - baseline > worst[0]:
            worst = (best.balanced_accuracy - baseline, row)
    assert worst is not None
    return worst[1]


def measure_gate(
    *,
    data,
    split,
    arts: dict,
    shipped: list[ExportFormat],
    representative: ExportFormat,
    probed: dict,
    holdout,
    holdout_outputs: dict,
    wire,
    probe_spec,
    max_excess: float | None,
    seed: int,
    budget: GateBudget = GateBudget(),
    progress: bool = True,
) -> GateRecord:
    """Measure every gate question (see the module doc) and return the record; ``probed`` maps the formats the
    export's probe ran on to their :class:`measure.Leakage`."""
    from privsplit.probes.linkage import LinkageSpec, probe_linkage

    started = time.perf_counter()
    if max_excess is None:
        return GateRecord(max_excess=None, skipped=("the gate is off (--max-excess off): nothing measured",))
    gate_probe = replace(probe_spec, reconstruction=False, null=False)
    readings: list[GateReading] = []
    skipped: list[str] = []
    noisy = wire.noise_sigma > 0
    keyed = frame_keyed(wire)
    frames = budget.frames if noisy and not keyed else 1
    if budget.frames > 1 and not noisy:
        skipped.append(f"{budget.frames} frames: the wire carries no channel noise, so the mean of frames is one frame")
    elif budget.frames > 1 and keyed:
        skipped.append(
            f"{budget.frames} frames: the device keys its noise on the frame, so {budget.frames} exact repeats are one "
            "frame (a stream whose frames differ: `privsplit probe features --frames 16 --frame-jitter S`)"
        )

    order = [representative] + [f for f in shipped if f is not representative]
    own, notes = [], []
    for fmt in order:
        stand_in = None
        for measured in own:
            figures = wire_agreement(holdout_outputs[fmt], holdout_outputs[measured], holdout.noise, wire)
            if represents(figures, wire, budget, frames):
                stand_in = measured
                break
        if fmt is representative:
            own.append(fmt)
        elif stand_in is None:
            own.append(fmt)
            notes.append(f"{fmt.value} on its own ({_figures(figures)} vs {measured.value})")
        else:
            notes.append(f"{fmt.value} represented by {stand_in.value} ({_figures(figures)})")
    measured_on = f"{', '.join(f.value for f in own)} (default encoder {representative.value})"
    if notes:
        measured_on += (
            "; int8 wire codes on the parity holdout, same noise: " + "; ".join(notes) + "; the private attribute "
            "is read on every artefact the probe ran on"
        )

    # (a) the private attribute
    if data.private is None:
        skipped.append("private attribute: the run names none")
    else:
        for fmt in shipped:
            if fmt in probed:
                readings.append(private_reading(probed[fmt], fmt.value, 1, max_excess))
            elif fmt in own:
                _log(f"private attribute on {fmt.value}", progress)
                leak = measure.artefact_leakage(
                    arts[fmt], wire, data, split, seed=seed + 3, spec=gate_probe, progress=False
                )
                readings.append(private_reading(leak, fmt.value, 1, max_excess))

    has_identity = "identity" in data.labels
    others = _other_attributes(data)
    if not has_identity:
        skipped.append(f"linkage: {data.source} has no identity label")
    if not others:
        skipped.append(f"other attributes: {data.source} has no label beyond the task and the private attribute")
    elif frames > 1:
        skipped.append(
            f"other attributes at {frames} frames: a second sweep over {len(others)} attributes is past the export's "
            "budget (the private attribute and linkage carry the frames reading)"
        )

    for fmt in own:
        cache = None
        if frames > 1 and data.private is not None:
            cache = cache or CachedWire(arts[fmt], data.images, wire, progress=progress)
            _log(f"private attribute on the mean of {frames} frames of {fmt.value}", progress)
            frames_probe = replace(
                gate_probe, attackers=tuple(a for a in gate_probe.attackers if a.value in budget.frames_attackers)
            )
            leak = measure.leakage(
                cache.encoder(frames=frames, seed=seed + 11),
                data,
                split,
                spec=frames_probe if frames_probe.attackers else gate_probe,
                progress=False,
            )
            readings.append(private_reading(leak, fmt.value, frames, max_excess))
        if has_identity:
            from privsplit.data import Part

            cache = cache or CachedWire(arts[fmt], data.images, wire, progress=progress)
            testable = np.ones(len(data), dtype=bool)
            testable[split[Part.MEMBERS]] = False
            ids = np.asarray(data.labels["identity"])
            rows = np.arange(len(data))
            null = None
            for k in (1, frames) if frames > 1 else (1,):
                _log(f"linkage on {fmt.value}" + ("" if k == 1 else f" (mean of {k} frames)"), progress)
                feats = cache.features(rows, frames=k, rng=np.random.default_rng(seed + 13 + k))
                result = probe_linkage(feats, ids, LinkageSpec(seed=seed, null=k == 1), testable=testable)
                null = result.null_auc if k == 1 else null
                readings.append(
                    GateReading(
                        question=GateQuestion.LINKAGE,
                        artefact=fmt.value,
                        frames=k,
                        best=result.best.auc,
                        floor=0.5,
                        null=null,
                        attacker=result.best.attacker,
                        max_excess=max_excess,
                    )
                )
        if others:
            _log(f"{len(others)} other attributes on {fmt.value}", progress)
            encode = measure.artefact_encode_fn(arts[fmt], wire, seed=seed + 17) if cache is None else None
            encode = encode or cache.encoder(frames=1, seed=seed + 17)
            name, attacker, best, floor, null = _sweep(
                encode, data, split, others, seed=seed, budget=budget, progress=progress
            )
            readings.append(
                GateReading(
                    question=GateQuestion.ATTRIBUTES,
                    artefact=fmt.value,
                    frames=1,
                    best=best,
                    floor=floor,
                    null=null,
                    attacker=f"{name} ({attacker})",
                    max_excess=max_excess,
                )
            )
    return GateRecord(
        max_excess=max_excess,
        readings=tuple(readings),
        measured_on=measured_on,
        skipped=tuple(skipped),
        seconds=time.perf_counter() - started,
    )


def _figures(agreement: tuple[float, int, float]) -> str:
    share, step, rms = agreement
    return f"{100 * share:.2f}% codes equal, max {step} step, RMS {rms:.3f} step"


def refusal(record: GateRecord, parity_path) -> str:
    """The one-line refusal: the worst failing question, its artefact, the excess against E, and the fix."""
    worst = max(record.failures, key=lambda r: r.excess)
    frames = "" if worst.frames == 1 else f", mean of {worst.frames} frames"
    more = len(record.failures) - 1
    others = "" if not more else f" (and {more} more reading{'s' if more > 1 else ''} over it)"
    return (
        f"leakage gate: {worst.artefact}'s {worst.question.described} excess {worst.excess:+.3f} "
        f"(best {worst.best:.3f} by {worst.attacker}{frames}; baseline {worst.baseline:.3f}) is above "
        f"--max-excess {record.max_excess:g}"
        f"{others}; nothing shipped (see {parity_path}): train with more protection (e.g. --privacy strong), or "
        "pass a larger --max-excess, or --max-excess off to ship it anyway"
    )
