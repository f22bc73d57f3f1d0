"""Epoch checkpoints of a training run, so ``privsplit train --resume`` continues an interrupted one.

``RUN/checkpoint/`` holds ``state.safetensors`` (the split model, the optimiser's moments, the best
weights kept for model selection) and ``checkpoint.json`` (the epoch, the history, the scheduler and
the optimiser's hyper-parameters, and the identity of the run: data, seed, split and training
options). It is replaced atomically at the end of every epoch (written beside, then renamed) and
removed when the run completes. No pickle: tensors go to safetensors, everything else to JSON.

The random state needs no saving: every epoch reseeds torch and numpy from ``(seed, epoch)`` (see
``privsplit.train.loop``), and the adversaries are re-initialised at the start of every epoch, so
the epoch number restores both exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from privsplit.errors import RunError
from privsplit.results import save_json

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_SCHEMA_VERSION = 1
STOP_ENV = "PRIVSPLIT_STOP_AFTER_EPOCH"  # testing aid: stop (as if killed) after saving this epoch


class TrainingStopped(RunError):
    """Raised after the checkpoint of the epoch named by ``PRIVSPLIT_STOP_AFTER_EPOCH``."""

    exit_code = 75


@dataclass(frozen=True)
class Checkpoint:
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors saved under ``prefix.`` with the prefix removed."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def checkpoint_dir(run_path: str | Path) -> Path:
    return Path(run_path) / CHECKPOINT_DIR


def has_checkpoint(run_path: str | Path) -> bool:
    return (checkpoint_dir(run_path) / "checkpoint.json").is_file()


def save_checkpoint(run_path: str | Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write the checkpoint beside the current one, then swap it in (a kill leaves one complete copy)."""
    from safetensors.torch import save_file

    target = checkpoint_dir(run_path)
    tmp = target.with_name(f"{CHECKPOINT_DIR}.tmp")
    old = target.with_name(f"{CHECKPOINT_DIR}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
    save_json(tmp / "checkpoint.json", meta, version=CHECKPOINT_SCHEMA_VERSION, indent=1)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(run_path: str | Path, identity: dict[str, Any]) -> Checkpoint:
    """The checkpoint of ``run_path``; a missing one or one of another configuration raises :class:`RunError`."""
    from safetensors.torch import load_file

    folder = checkpoint_dir(run_path)
    if not (folder / "checkpoint.json").is_file():
        old = folder.with_name(f"{CHECKPOINT_DIR}.old")
        if (old / "checkpoint.json").is_file():  # killed between the two renames
            old.rename(folder)
        else:
            done = (Path(run_path) / "metrics.json").is_file()
            why = "the run completed (metrics.json is there); nothing to resume" if done else "no epoch finished yet"
            raise RunError(f"--resume: {folder} has no checkpoint ({why}); train without --resume")
    try:
        meta = json.loads((folder / "checkpoint.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
    except (OSError, ValueError) as exc:
        raise RunError(f"--resume: {folder} is damaged ({exc}); train again without --resume") from exc
    if meta.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        raise RunError(
            f"--resume: {folder} has checkpoint schema {meta.get('schema_version')}; train again without --resume"
        )
    saved = meta.get("identity", {})
    if saved != identity:
        diff = sorted(_differences(saved, identity))
        raise RunError(
            f"--resume: {run_path} was started with other options ({', '.join(diff[:4])}); "
            "resume with the same options, or train into a new --out"
        )
    return Checkpoint(meta=meta, tensors=tensors)


def remove_checkpoint(run_path: str | Path) -> None:
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.tmp", f"{CHECKPOINT_DIR}.old"):
        shutil.rmtree(Path(run_path) / name, ignore_errors=True)


def stop_requested(epoch: int) -> bool:
    value = os.environ.get(STOP_ENV, "").strip()
    return value.isdigit() and int(value) == epoch


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    if a != b:
        return [f"{prefix.rstrip('.')} was {a!r}, now {b!r}"]
    return []


# ---- optimiser and scheduler state as safetensors + JSON -------------------------------------------
def optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, json)`` of ``opt.state_dict()``: per-parameter moments as tensors, the rest as JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars, "indices": [int(i) for i in sd["state"]]}


def load_optimizer_state(opt: torch.optim.Optimizer, ckpt: Checkpoint, prefix: str, meta: dict[str, Any]) -> None:
    tensors = ckpt.group(prefix)
    state: dict[int, dict[str, Any]] = {}
    for index in meta["indices"]:
        entry = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(index)}
        entry.update(meta["scalars"].get(str(index), {}))
        state[index] = entry
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
