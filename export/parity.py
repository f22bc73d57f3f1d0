"""The parity report: each artefact against PyTorch, on held-out images (typed, versioned JSON).

Per format: feature error (max abs, mean per-image cosine) of the artefact's noise-free output vs the
torch encoder's; end-to-end holdout task accuracy (artefact features + the same seeded noise -> wire
int8 quantization -> dequantize -> server.onnx) vs the torch model's (torch features + the same noise
-> torch head); the feature-leakage probe re-run on what the artefact puts on the wire; size; and
whether it passed (accuracy drop within ``tolerance``) and so was shipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privsplit.errors import RunError
from privsplit.results import check_schema, from_dict, read_json, save_json, to_dict
from privsplit.run import noise_note

PARITY_SCHEMA_VERSION = 1
KIND = "parity"
_HINT = "re-run `privsplit export`"


@dataclass(frozen=True)
class FormatParity:
    format: str
    passed: bool
    reason: str
    size_bytes: int | None = None
    size_ratio: float | None = None  # size / the float32 artefact of the same backend
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    cosine: float | None = None  # mean over holdout images of the cosine of flattened features
    cosine_min: float | None = None
    task_accuracy: float | None = None
    task_accuracy_torch: float | None = None
    attribute_balanced_accuracy: float | None = None
    reconstruction_ssim: float | None = None
    input: Mapping[str, Any] | None = None  # TensorSpec JSON of the artefact input
    output: Mapping[str, Any] | None = None
    seconds: float | None = None  # conversion + checks + parity

    @property
    def accuracy_drop(self) -> float | None:
        if self.task_accuracy is None or self.task_accuracy_torch is None:
            return None
        return self.task_accuracy_torch - self.task_accuracy

    def to_json(self) -> dict:
        return to_dict({**to_dict(self), "accuracy_drop": self.accuracy_drop})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FormatParity:
        return from_dict(cls, data)


@dataclass(frozen=True)
class TorchReference:
    """The PyTorch model's figures on the same holdout, same noise (what each format is held to)."""

    task_accuracy: float
    attribute_balanced_accuracy: float | None = None
    attribute_chance: float | None = None
    attribute_task_floor: float | None = None
    reconstruction_ssim: float | None = None
    reconstruction_baseline_ssim: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TorchReference:
        return from_dict(cls, data)


@dataclass(frozen=True)
class ParityReport:
    run: str
    holdout_size: int
    tolerance: float  # max task-accuracy drop (fraction; 0.01 = 1 point)
    noise_sigma: float
    seed: int
    calibration_size: int
    wire: Mapping[str, Any]  # FeatureSpec JSON
    reference: TorchReference
    formats: tuple[FormatParity, ...] = field(default_factory=tuple)
    probe: Mapping[str, Any] | None = None  # FeatureProbeSpec JSON, None when the probe was skipped
    cloud: Mapping[str, Any] | None = (
        None  # server.onnx / purifier.onnx vs torch: {"server": {...}, "purifier": {...}|None}
    )
    noise_seed: int | None = None  # the run's holdout noise seed (the noise every accuracy here includes)
    gate: Mapping[str, Any] | None = None  # the leakage gate's record (privsplit.leakage_gate.GateRecord JSON)

    def format(self, name: str) -> FormatParity:
        for row in self.formats:
            if row.format == name:
                return row
        raise KeyError(name)

    @property
    def passed(self) -> tuple[str, ...]:
        return tuple(r.format for r in self.formats if r.passed)

    def to_json(self) -> dict:
        body = {**to_dict(self), "formats": {r.format: r.to_json() for r in self.formats}}
        return {"schema_version": PARITY_SCHEMA_VERSION, "kind": KIND, **body}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, source: str = "parity report") -> ParityReport:
        data = check_schema(data, version=PARITY_SCHEMA_VERSION, kind=KIND, source=source, hint=_HINT)
        formats = tuple(FormatParity.from_json({**v, "format": k}) for k, v in data["formats"].items())
        return from_dict(cls, {**data, "formats": formats})

    def save(self, path: str | Path) -> Path:
        return save_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> ParityReport:
        path = Path(path)
        if not path.is_file():
            raise RunError(f"{path} not found: run `privsplit export RUN --out DIR` first")
        return cls.from_json(read_json(path, what="a parity report", hint=_HINT), source=str(path))

    def summary(self) -> str:
        def pct(v):  # accuracies as fractions, as train and probe print them
            return "   -  " if v is None else f"{v:.4f}"

        def f(v, spec):
            return "-" if v is None else format(v, spec)

        ref = self.reference
        head = (
            f"parity on {self.holdout_size} holdout images of {self.run}; accuracies are holdout task accuracies "
            f"{noise_note(self.noise_sigma, self.noise_seed)}; tolerance {100 * self.tolerance:.2f} points"
        )
        cols = (
            f"{'format':<15}{'size KB':>9}{'ratio':>7}{'max|err|':>10}{'cosine':>9}"
            f"{'acc':>8}{'torch':>8}{'attr BA':>10}{'SSIM':>7}  status"
        )
        lines = [head, cols, "-" * len(cols)]
        lines.append(
            f"{'pytorch':<15}{'':>9}{'':>7}{'':>10}{'':>9}{pct(ref.task_accuracy):>8}{'':>8}"
            f"{pct(ref.attribute_balanced_accuracy):>10}{f(ref.reconstruction_ssim, '.3f'):>7}  reference"
        )
        for r in self.formats:
            size = "-" if r.size_bytes is None else f"{r.size_bytes / 1024:.1f}"
            status = "shipped" if r.passed else f"FAILED: {r.reason}"
            lines.append(
                f"{r.format:<15}{size:>9}{f(r.size_ratio, '.2f'):>7}"
                f"{f(r.max_abs_err, '.2e'):>10}{f(r.cosine, '.5f'):>9}"
                f"{pct(r.task_accuracy):>8}{pct(r.task_accuracy_torch):>8}{pct(r.attribute_balanced_accuracy):>10}"
                f"{f(r.reconstruction_ssim, '.3f'):>7}  {status}"
            )
        if ref.attribute_chance is not None:
            lines.append(
                f"attribute chance {pct(ref.attribute_chance).strip()}, "
                f"task floor {pct(ref.attribute_task_floor).strip()}"
            )
        if self.cloud:
            server, purifier = self.cloud.get("server"), self.cloud.get("purifier")
            lines.append(
                f"server.onnx vs torch: max abs err {server['max_abs_err']:.2e}"
                + ("; no purifier" if not purifier else f"; purifier.onnx: {purifier['max_abs_err']:.2e}")
            )
        if ref.reconstruction_baseline_ssim is not None:
            lines.append(f"reconstruction SSIM of the mean-image baseline {ref.reconstruction_baseline_ssim:.3f}")
        if self.gate is not None:
            from privsplit.leakage_gate import GateRecord

            lines.append(GateRecord.from_json(self.gate).summary())
        return "\n".join(lines)
