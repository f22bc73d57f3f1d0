"""The run folder: the contract between training, probes and export.

Layout (all JSON or safetensors; never pickle)::

    RUN/config.json      RunConfig: data spec, task/private, seed, model config, training options
    RUN/split.json       the seeded members/reference/holdout/attacker indices
    RUN/encoder.safetensors, RUN/head.safetensors
    RUN/metrics.json     holdout task accuracy and training history
    RUN/<other>.json     probe results, purifier config, ...
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from privsplit.errors import ConfigError, RunError
from privsplit.results import check_schema, from_dict, save_json, to_dict

if TYPE_CHECKING:  # pragma: no cover
    from privsplit.data import Dataset, Split
    from privsplit.models import ModelConfig, SplitModel

RUN_SCHEMA_VERSION = 1
# The channel-noise seed of a run's holdout accuracy is ``seed + EVAL_NOISE_OFFSET`` (recorded in metrics.json), so
# train, probe and export score the holdout with the same noise draw and print the same accuracy.
EVAL_NOISE_OFFSET = 11
T = TypeVar("T")

# The command that rewrites a damaged file of a run (the fix named in the error).
_TRAIN_FILES = ("config", "split", "metrics", "encoder", "head")


def noise_note(sigma: float | None, seed: int | None) -> str:
    """How a printed holdout accuracy was measured: "(with channel noise σ=1, noise seed 11)"."""
    if sigma is None:
        return "(with the run's channel noise)"
    if sigma <= 0:
        return "(no channel noise: σ=0)"
    return f"(with channel noise σ={sigma:g}" + ("" if seed is None else f", noise seed {seed}") + ")"


def _fix_for(target: Path) -> str:
    if target.stem in _TRAIN_FILES:
        return f"re-train the run (`privsplit train ... --out {target.parent}`)"
    if target.stem == "purifier":
        return f"re-run `privsplit train-purifier {target.parent}`"
    return "re-run the step that writes it"


@dataclass(frozen=True)
class DataConfig:
    spec: str
    task: str
    private: str | None
    image_size: int
    limit: int | None = None


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig
    seed: int
    train: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"schema_version": RUN_SCHEMA_VERSION, **to_dict(self)}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "config.json") -> RunConfig:
        from privsplit.models import ModelConfig

        data = check_schema(data, version=RUN_SCHEMA_VERSION, source=source, hint="re-run `privsplit train`")
        return from_dict(cls, {**data, "model": ModelConfig.from_json(data["model"])})


class RunFolder:
    """Reads and writes one run. Heavy imports (torch, safetensors) happen only in the methods that need them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---- generic JSON -------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    def write_json(self, name: str, data: Any) -> Path:
        return save_json(self.file(name), data)

    def read_json(self, name: str) -> Any:
        target = self.file(name)
        if not target.is_file():
            raise RunError(f"{target} not found: is {self.path} a run folder written by `privsplit train`?")
        try:
            return json.loads(target.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            where = f"{exc.msg} at line {exc.lineno}"
            raise RunError(f"{target} is damaged, not valid JSON ({where}): {_fix_for(target)}") from None
        except UnicodeDecodeError:
            raise RunError(f"{target} is damaged, not UTF-8 text: {_fix_for(target)}") from None

    def parse_json(self, name: str, parse: Callable[[Any], T]) -> T:
        """``parse(read_json(name))``; missing or mistyped fields make it a damaged file (:class:`RunError`)."""
        data = self.read_json(name)
        target = self.file(name)
        if not isinstance(data, dict):
            raise RunError(f"{target} is damaged, not a JSON object: {_fix_for(target)}")
        try:
            return parse(data)
        except KeyError as exc:
            raise RunError(f"{target} is damaged, it lacks {exc}: {_fix_for(target)}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise RunError(f"{target} is damaged ({type(exc).__name__}: {exc}): {_fix_for(target)}") from None
        except ConfigError as exc:  # a field of the wrong shape (privsplit.results.from_dict)
            raise RunError(f"{target} is damaged ({exc}): {_fix_for(target)}") from None

    # ---- config, split, data -----------------------------------------------------------------
    def check(self) -> RunFolder:
        if not self.path.is_dir():
            raise RunError(f"run folder {self.path} does not exist: create it with `privsplit train --out {self.path}`")
        for name in ("config.json", "split.json", "encoder.safetensors", "head.safetensors"):
            if not self.has(name):
                raise RunError(f"{self.path} lacks {name}: it is not a complete run (re-run `privsplit train`)")
        return self

    def config(self) -> RunConfig:
        return self.parse_json("config.json", lambda d: RunConfig.from_json(d, source=str(self.file("config.json"))))

    def collapse_reason(self) -> str | None:
        """Why the run's protected training collapsed (``metrics.json``'s ``collapse``), or None if it did not."""
        if not self.has("metrics.json"):
            return None
        check = self.parse_json("metrics.json", lambda d: d.get("collapse") or {})
        return str(check.get("reason") or "it collapsed") if check.get("collapsed") else None

    def eval_noise_seed(self) -> int:
        """The channel-noise seed of the run's holdout accuracy (metrics.json; older runs: config seed + 11)."""
        if self.has("metrics.json"):
            seed = self.parse_json("metrics.json", lambda d: d["task"].get("noise_seed"))
            if seed is not None:
                return int(seed)
        return self.config().seed + EVAL_NOISE_OFFSET

    def write_config(self, config: RunConfig) -> None:
        self.write_json("config.json", config.to_json())

    def split(self) -> Split:
        from privsplit.data import Split

        return self.parse_json("split.json", lambda d: Split.from_json(d, source=str(self.file("split.json"))))

    def dataset(self) -> Dataset:
        """Reload the run's dataset exactly as it was trained on (same spec, size, limit, task)."""
        from privsplit.data import load_dataset

        d = self.config().data
        data = load_dataset(d.spec, task=d.task, private=d.private, image_size=d.image_size, limit=d.limit)
        split = self.split()
        if len(data) != split.n:
            raise RunError(f"{d.spec} now holds {len(data)} images but the run's split was made for {split.n}")
        return data

    # ---- weights --------------------------------------------------------------------------------
    def save_module(self, name: str, module) -> Path:
        from safetensors.torch import save_file

        self.path.mkdir(parents=True, exist_ok=True)
        target = self.file(f"{name}.safetensors")
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, str(target))
        return target

    def load_module(self, name: str, module):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        target = self.file(f"{name}.safetensors")
        if not target.is_file():
            raise RunError(f"{target} not found: the run lacks its {name} weights")
        try:
            state = load_file(str(target))
        except (SafetensorError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            fix = _fix_for(target)
            raise RunError(f"{target} is damaged, not a readable safetensors file ({first}): {fix}") from None
        try:
            module.load_state_dict(state)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise RunError(
                f"{target} does not fit the model that config.json describes ({first}); "
                "the run was written by another privsplit version: re-run `privsplit train`"
            ) from exc
        return module

    def save_split_model(self, model: SplitModel) -> None:
        self.save_module("encoder", model.encoder)
        self.save_module("head", model.head)

    def load_split_model(self) -> SplitModel:
        """The trained encoder + server layers, in eval mode."""
        from privsplit.models import build_split_model

        self.check()
        model = build_split_model(self.config().model)
        self.load_module("encoder", model.encoder)
        self.load_module("head", model.head)
        return model.eval()
