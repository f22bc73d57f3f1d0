"""The purifier (Prediction Purification, Yang et al. 2020): reshapes the returned confidence vector.

``Purifier.forward`` maps probabilities ``(B, K)`` to purified probabilities ``(B, K)``; every step is
deterministic and exportable to ONNX (no random ops, no data-dependent control flow):

1. **clamp and shift** the log-probabilities relative to the top entry, ``r = log p - max log p``:
   the network input is ``z = clamp(r, -c, 0) / c + 1`` in ``[0, 1]`` (top entry 1; every entry below
   ``exp(-c)`` times the top one becomes 0), ``c = PurifierConfig.log_clamp``.
2. **collapse**: a vector whose runner-up lies under the clamp (``r_2 < -c``: every other entry is
   below ``exp(-c)`` times the top one) becomes one-hot on its label -- the near-one-hot vectors of
   members *and* of confidently classified non-members, where an overfit model's membership signal
   sits, all return the same vector. A vector with a runner-up above the clamp keeps its shape (the
   base logits are ``r`` itself). Distortion is spent where it buys privacy, not on vectors that stay
   recognisable anyway (measured: at equal leakage this costs ~25% less distortion than clamping
   entry by entry).
3. a small **MLP autoencoder** ``K -> hidden -> bottleneck -> hidden -> K`` (Linear + BatchNorm + ReLU,
   the paper's 10 -> 7 -> 4 -> 7 -> 10) on ``z`` adds a learned correction to the base logits (its last
   layer starts at zero, so an untrained purifier is the pure clamp). Training (``privsplit.train.purifier``)
   fits it on ``reference`` outputs: ``ae`` mode to the original scores, ``adversarial`` mode also
   against a membership discriminator and an inversion decoder.
4. **softmax**; entries below ``min_prob`` are snapped to 0 and the vector renormalised (tiny tail
   values would carry the input's fine structure);
5. **label preservation** (``preserve_label``): the top entry is swapped with the entry at the
   original argmax, so the returned label is exactly the classifier's (ties aside).
6. **label swap** (only with ``swap_margin``, ``privsplit train-purifier --mode swap``): a record that
   looks like a member -- its log-margin ``log p_1 - log p_2`` is at least ``swap_margin`` -- and whose
   deterministic pseudo-random gate :func:`swap_gate_value` (from its own log-scores) lies below
   ``swap_gate`` gets the label of its original runner-up (the entries at the label and the runner-up
   trade places). ``swap_margin`` bounds the share of non-members that change label, ``swap_gate``
   the share of member-like records that do (Purifier's label swapper, Yang et al. 2023).

Where a run stores it: ``RUN/purifier.json`` (:class:`PurifierConfig` + training facts) and
``RUN/purifier.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from privsplit.errors import ConfigError, RunError
from privsplit.results import from_dict, save_json, to_dict

PURIFIER_SCHEMA_VERSION = 1
PURIFIER_JSON = "purifier.json"
PURIFIER_WEIGHTS = "purifier"  # -> purifier.safetensors
COLLAPSED_LOGIT = -30.0


class RunStore(Protocol):
    """What the purifier needs of a run folder (:class:`privsplit.run.RunFolder`, a layer above the models)."""

    path: Path

    def file(self, name: str) -> Path: ...
    def has(self, name: str) -> bool: ...
    def read_json(self, name: str) -> Any: ...
    def write_json(self, name: str, data: Any) -> Path: ...
    def save_module(self, name: str, module: nn.Module) -> Path: ...
    def load_module(self, name: str, module: nn.Module) -> nn.Module: ...


@dataclass(frozen=True)
class PurifierConfig:
    """Everything that rebuilds a purifier; ``hidden``/``bottleneck`` default from ``num_classes``."""

    num_classes: int
    hidden: int = 0
    bottleneck: int = 0
    log_clamp: float = 3.0
    min_prob: float = 1e-3
    preserve_label: bool = True
    swap_margin: float | None = None  # step 6 off when None
    swap_gate: float = 1.0

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"a purifier needs at least 2 classes, got {self.num_classes}")
        if self.hidden <= 0 or self.bottleneck <= 0:
            hidden, bottleneck = default_widths(self.num_classes)
            object.__setattr__(self, "hidden", self.hidden if self.hidden > 0 else hidden)
            object.__setattr__(self, "bottleneck", self.bottleneck if self.bottleneck > 0 else bottleneck)
        if not self.log_clamp > 0:
            raise ConfigError(f"purifier log_clamp must be > 0, got {self.log_clamp}")
        if not 0 <= self.min_prob < 1.0 / self.num_classes:
            raise ConfigError(f"purifier min_prob must be in [0, 1/K), got {self.min_prob}")
        if self.swap_margin is not None and not self.swap_margin >= 0:
            raise ConfigError(f"purifier swap_margin must be >= 0, got {self.swap_margin}")
        if not 0 <= self.swap_gate <= 1:
            raise ConfigError(f"purifier swap_gate must be in [0, 1], got {self.swap_gate}")

    def to_json(self) -> dict[str, Any]:
        data = to_dict(self)
        if self.swap_margin is None:  # a label-keeping purifier is written as before step 6 existed
            del data["swap_margin"], data["swap_gate"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PurifierConfig:
        return from_dict(cls, data, strict=True)


def default_widths(num_classes: int) -> tuple[int, int]:
    """The paper's shapes: 10 -> 7 -> 4, 100 -> 50, 530 -> 200; about K*0.7 and K*0.4 when small."""
    if num_classes <= 16:
        return max(3, round(0.7 * num_classes)), max(2, round(0.4 * num_classes))
    hidden = max(16, min(200, num_classes // 2))
    return hidden, max(8, hidden // 2)


class Purifier(nn.Module):
    """Probabilities ``(B, K)`` -> purified probabilities ``(B, K)`` (see the module docstring)."""

    def __init__(self, config: PurifierConfig) -> None:
        super().__init__()
        self.config = config
        k, h, b = config.num_classes, config.hidden, config.bottleneck

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]

        self.net = nn.Sequential(*block(k, h), *block(h, b), *block(b, h), nn.Linear(h, k))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def relative_logp(self, probs: torch.Tensor) -> torch.Tensor:
        logp = torch.log(probs.clamp_min(1e-30))
        return logp - logp.max(dim=1, keepdim=True).values

    def encode_input(self, probs: torch.Tensor) -> torch.Tensor:
        """Step 1: clamped, shifted log-probabilities in ``[0, 1]``."""
        c = self.config.log_clamp
        return self.relative_logp(probs).clamp(min=-c) / c + 1.0

    def base_logits(self, probs: torch.Tensor) -> torch.Tensor:
        """Step 2: one-hot logits for collapsed rows, the relative log-probabilities for the others."""
        rel = self.relative_logp(probs).clamp(min=COLLAPSED_LOGIT)
        runner_up = torch.topk(rel, 2, dim=1).values[:, 1:2]
        onehot = torch.where(rel >= 0, torch.zeros_like(rel), torch.full_like(rel, COLLAPSED_LOGIT))
        return torch.where(runner_up < -self.config.log_clamp, onehot, rel)

    def soft(self, probs: torch.Tensor) -> torch.Tensor:
        """Steps 1-4 without the snap (differentiable: what training optimises)."""
        return torch.softmax(self.base_logits(probs) + self.net(self.encode_input(probs)), dim=1)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        q = self.soft(probs)
        q = snap_small(q, self.config.min_prob)
        if self.config.preserve_label:
            q = swap_to_label(q, probs.argmax(dim=1))
        if self.config.swap_margin is not None:
            q = swap_member_like(q, probs, margin=self.config.swap_margin, gate=self.config.swap_gate)
        return q


def snap_small(q: torch.Tensor, min_prob: float) -> torch.Tensor:
    """Entries below ``min_prob`` become 0; the vector is renormalised (the top entry always stays)."""
    if min_prob <= 0:
        return q
    top = q.max(dim=1, keepdim=True).values
    kept = torch.where((q >= min_prob) | (q >= top), q, torch.zeros_like(q))
    return kept / kept.sum(dim=1, keepdim=True)


def swap_to_label(q: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Swap each row's top entry with its entry at ``label``: the argmax becomes ``label``."""
    k = q.shape[1]
    top_idx = q.argmax(dim=1)
    cols = torch.arange(k, device=q.device).unsqueeze(0)
    top_val = q.max(dim=1, keepdim=True).values
    at_label = q.gather(1, label.unsqueeze(1))
    is_label = cols == label.unsqueeze(1)
    is_top = cols == top_idx.unsqueeze(1)
    out = torch.where(is_label, top_val, q)
    return torch.where(is_top & ~is_label, at_label, out)


SWAP_GATE_SCALE = 7.31  # spreads the weighted log-score sum over many periods of frac()


def log_margin(probs: torch.Tensor) -> torch.Tensor:
    """``log p_1 - log p_2`` per row (top entry over runner-up), >= 0."""
    top2 = torch.topk(torch.log(probs.clamp_min(1e-30)), 2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def swap_gate_value(probs: torch.Tensor) -> torch.Tensor:
    """A deterministic pseudo-uniform number in ``[0, 1)`` per row, from the row's own log-scores.

    ``frac(SWAP_GATE_SCALE * sum_k w_k log p_k)`` with fixed irrational weights ``w_k``: the log-scores of
    the small entries vary over several nats between records, so the gate is spread evenly whatever
    the confidence (exportable: no random op).
    """
    k = probs.shape[1]
    w = torch.remainder(torch.arange(1, k + 1, dtype=probs.dtype, device=probs.device) * 0.6180339887, 1.0) + 0.5
    x = SWAP_GATE_SCALE * (torch.log(probs.clamp_min(1e-30)) * w).sum(1)
    return x - torch.floor(x)


def swap_member_like(q: torch.Tensor, probs: torch.Tensor, *, margin: float, gate: float) -> torch.Tensor:
    """Step 6: rows of ``probs`` with log-margin >= ``margin`` and gate < ``gate`` take their runner-up's label."""
    runner_up = torch.topk(probs, 2, dim=1).indices[:, 1]
    chosen = (log_margin(probs) >= margin) & (swap_gate_value(probs) < gate)
    return torch.where(chosen.unsqueeze(1), swap_to_label(q, runner_up), q)


def purify_numpy(purifier: Purifier, probs, batch_size: int = 4096):
    """Run ``purifier`` (eval mode) on a numpy ``(N, K)`` array, return float32 numpy."""
    import numpy as np

    purifier.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(probs), batch_size):
            out.append(purifier(torch.as_tensor(np.asarray(probs[i : i + batch_size]), dtype=torch.float32)).numpy())
    return np.concatenate(out) if out else np.zeros((0, purifier.config.num_classes), np.float32)


def save_purifier(run: RunStore, purifier: Purifier, *, training: dict[str, Any] | None = None) -> None:
    """Write ``RUN/purifier.json`` and ``RUN/purifier.safetensors``."""
    run.save_module(PURIFIER_WEIGHTS, purifier)
    body = {"config": purifier.config.to_json(), "training": training or {}}
    save_json(run.file(PURIFIER_JSON), body, version=PURIFIER_SCHEMA_VERSION)


def load_purifier(run: RunStore) -> Purifier | None:
    """The run's purifier in eval mode, or ``None`` when the run has none."""
    if not run.has(PURIFIER_JSON):
        return None
    data = run.parse_json(PURIFIER_JSON, dict)
    if data.get("schema_version") != PURIFIER_SCHEMA_VERSION:
        raise RunError(
            f"{run.file(PURIFIER_JSON)} has schema version {data.get('schema_version')}, expected "
            f"{PURIFIER_SCHEMA_VERSION}: re-run `privsplit train-purifier {run.path}`"
        )
    purifier = Purifier(run.parse_json(PURIFIER_JSON, lambda d: PurifierConfig.from_json(d["config"])))
    if not run.has(f"{PURIFIER_WEIGHTS}.safetensors"):
        raise RunError(
            f"{run.path} has {PURIFIER_JSON} but no {PURIFIER_WEIGHTS}.safetensors: "
            f"re-run `privsplit train-purifier {run.path}`"
        )
    run.load_module(PURIFIER_WEIGHTS, purifier)
    return purifier.eval()


def purifier_training_facts(run: RunStore) -> dict[str, Any]:
    """The ``training`` block of ``purifier.json`` (mode, epochs, reference figures)."""
    return dict(run.parse_json(PURIFIER_JSON, lambda d: dict(d.get("training", {}))))
