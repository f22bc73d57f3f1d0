"""The run folder: the contract between training, probes and export.

Layout (all JSON or safetensors; never pickle)::

    RUN/config.json      RunConfig: data spec, task/private, seed, model config, training options
    RUN/split.json       the seeded members/reference/holdout/attacker indices
    RUN/encoder.safetensors, RUN/head.safetensors
    RUN/metrics.json     holdout task accuracy and training history
    RUN/<other>.json     probe results, purifier config, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privsplit.errors import RunError
from privsplit.results import check_schema, from_dict, read_json, save_json, to_dict

if TYPE_CHECKING:  # pragma: no cover
    from privsplit.data import Dataset, Split
    from privsplit.models import ModelConfig, SplitModel

RUN_SCHEMA_VERSION = 1


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
    model: "ModelConfig"
    seed: int
    train: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"schema_version": RUN_SCHEMA_VERSION, **to_dict(self)}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "config.json") -> "RunConfig":
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
        return read_json(target, what=name, hint="re-run the step that writes it")

    # ---- config, split, data -----------------------------------------------------------------
    def check(self) -> "RunFolder":
        if not self.path.is_dir():
            raise RunError(f"run folder {self.path} does not exist: create it with `privsplit train --out {self.path}`")
        for name in ("config.json", "split.json", "encoder.safetensors", "head.safetensors"):
            if not self.has(name):
                raise RunError(f"{self.path} lacks {name}: it is not a complete run (re-run `privsplit train`)")
        return self

    def config(self) -> RunConfig:
        return RunConfig.from_json(self.read_json("config.json"), source=str(self.file("config.json")))

    def write_config(self, config: RunConfig) -> None:
        self.write_json("config.json", config.to_json())

    def split(self) -> "Split":
        from privsplit.data import Split

        return Split.from_json(self.read_json("split.json"), source=str(self.file("split.json")))

    def dataset(self) -> "Dataset":
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
        from safetensors.torch import load_file

        target = self.file(f"{name}.safetensors")
        if not target.is_file():
            raise RunError(f"{target} not found: the run lacks its {name} weights")
        try:
            module.load_state_dict(load_file(str(target)))
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise RunError(
                f"{target} does not fit the model that config.json describes ({first}); "
                "the run was written by another privsplit version: re-run `privsplit train`"
            ) from exc
        return module

    def save_split_model(self, model: "SplitModel") -> None:
        self.save_module("encoder", model.encoder)
        self.save_module("head", model.head)

    def load_split_model(self) -> "SplitModel":
        """The trained encoder + server layers, in eval mode."""
        from privsplit.models import build_split_model

        self.check()
        model = build_split_model(self.config().model)
        self.load_module("encoder", model.encoder)
        self.load_module("head", model.head)
        return model.eval()
