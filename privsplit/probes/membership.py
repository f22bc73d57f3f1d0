"""Membership-inference attacks on the confidence vectors a deployed classifier returns.

Every attack maps what a client of the service sees — the returned probability vector, and the true
label the attacker knows for its candidate record — to a membership score (higher = "member"). The
threshold attacks need no training; the learned ones (ML-Leaks, NSH, shadow-model) train only on the
attacker's *shadow* data (a shadow classifier's outputs on its own members and non-members), never on
the evaluated members/non-members.

* ``confidence``: the top probability (Salem et al., ML-Leaks adversary 3; label-free).
* ``loss``: minus the cross-entropy of the true label (Yeom et al.).
* ``entropy``: minus the prediction entropy (label-free).
* ``modified_entropy``: minus Song & Mittal's modified entropy, which uses the true label.
* ``label_only``: 1 when the prediction is correct: its AUC is the label floor.
* ``ml_leaks``: an MLP on the sorted top-k scores (Salem et al.), as probabilities and log-probabilities.
* ``nsh``: Nasr-Shokri-Houmansadr's two-branch MLP: one branch on the log-score vector, one on the
  one-hot true label, joined by a shared classifier.
* ``shadow``: logistic regression on the sorted top-3 log-probabilities, the loss and correctness.
* ``augmentation`` and ``lira_offline`` (:mod:`privsplit.probes.calibrated_attacks`): they query more
  than the record's own vector (flipped / shifted copies; the shadow models' scores on the record)
  and run when those queries are given (:class:`ExtraQueries`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from torch import nn

from privsplit.errors import ConfigError
from privsplit.models.threads import tiny_model_threads
from privsplit.probes.mia_metrics import MIAMetrics, mia_metrics

LOG_EPS = 1e-30  # the attacker takes the log of what it receives; float32 underflows to 0 below ~1e-38


class Attack(str, Enum):
    CONFIDENCE = "confidence"
    LOSS = "loss"
    ENTROPY = "entropy"
    MODIFIED_ENTROPY = "modified_entropy"
    LABEL_ONLY = "label_only"
    ML_LEAKS = "ml_leaks"
    NSH = "nsh"
    SHADOW = "shadow"
    AUGMENTATION = "augmentation"
    LIRA_OFFLINE = "lira_offline"

    @property
    def learned(self) -> bool:
        return self in (Attack.ML_LEAKS, Attack.NSH, Attack.SHADOW)

    @property
    def label_only(self) -> bool:
        """Reads nothing but returned labels: no label-keeping score edit changes its result."""
        return self in (Attack.LABEL_ONLY, Attack.AUGMENTATION)


@dataclass(frozen=True, eq=False)
class ScoredRecords:
    """Returned probability vectors ``(N, K)`` and the records' true labels ``(N,)``."""

    probs: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.probs.ndim != 2 or len(self.probs) != len(self.labels):
            raise ConfigError(
                f"scores must be (N, K) with one label each, got {self.probs.shape} and {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[1])

    @property
    def correct(self) -> np.ndarray:
        return (self.probs.argmax(1) == self.labels).astype(np.float64)

    @property
    def logp(self) -> np.ndarray:
        return np.log(np.clip(self.probs.astype(np.float64), LOG_EPS, None))

    def subset(self, index: np.ndarray) -> ScoredRecords:
        return ScoredRecords(self.probs[index], self.labels[index])

    @staticmethod
    def concat(*parts: ScoredRecords) -> ScoredRecords:
        return ScoredRecords(np.concatenate([p.probs for p in parts]), np.concatenate([p.labels for p in parts]))


@dataclass(frozen=True, eq=False)
class ShadowData:
    """The attacker's labelled training examples: shadow-model outputs on its members and non-members."""

    members: ScoredRecords
    nonmembers: ScoredRecords

    def joined(self) -> tuple[ScoredRecords, np.ndarray]:
        y = np.r_[np.ones(len(self.members)), np.zeros(len(self.nonmembers))]
        return ScoredRecords.concat(self.members, self.nonmembers), y


@dataclass(frozen=True, eq=False)
class ExtraQueries:
    """Scores beyond each evaluated record's own vector (members first, then non-members, as evaluated).

    ``augmented (A, N, K)``: the service's scores on A flipped / shifted copies of every record;
    ``shadow (S, N, K)``: the attacker's S shadow models' scores on every record (none trained on it).
    """

    augmented: np.ndarray | None = None
    shadow: np.ndarray | None = None

    def available(self) -> tuple[Attack, ...]:
        skip = {Attack.AUGMENTATION} if self.augmented is None else set()
        skip |= {Attack.LIRA_OFFLINE} if self.shadow is None else set()
        return tuple(a for a in Attack if a not in skip)


@dataclass(frozen=True)
class AttackConfig:
    top_k: int = 3
    hidden: int = 64
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-4


# ---- threshold attacks -------------------------------------------------------------------------
def threshold_score(attack: Attack, records: ScoredRecords) -> np.ndarray:
    p, logp, y = records.probs.astype(np.float64), records.logp, records.labels
    rows = np.arange(len(y))
    if attack is Attack.CONFIDENCE:
        return p.max(1)
    if attack is Attack.LOSS:
        return logp[rows, y]
    if attack is Attack.ENTROPY:
        return (p * logp).sum(1)
    if attack is Attack.MODIFIED_ENTROPY:
        py = p[rows, y]
        log1m = np.log(np.clip(1.0 - p, LOG_EPS, None))
        others = (p * log1m).sum(1) - py * log1m[rows, y]
        mentr = -(1.0 - py) * logp[rows, y] - others
        return -mentr
    if attack is Attack.LABEL_ONLY:
        return records.correct
    if attack in (Attack.AUGMENTATION, Attack.LIRA_OFFLINE):
        raise ConfigError(f"the {attack.value} attack needs extra queries (ExtraQueries)")
    raise ConfigError(f"{attack.value} is not a threshold attack")


# ---- features of the learned attacks -----------------------------------------------------------
def sorted_top(records: ScoredRecords, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, records.num_classes)
    order = np.argsort(-records.probs, axis=1)[:, :k]
    return np.take_along_axis(records.probs.astype(np.float64), order, 1), np.take_along_axis(records.logp, order, 1)


def shadow_features(records: ScoredRecords, k: int = 3) -> np.ndarray:
    _, top_logp = sorted_top(records, k)
    loss = records.logp[np.arange(len(records)), records.labels]
    return np.c_[top_logp, loss, records.correct]


def mlleaks_features(records: ScoredRecords, k: int) -> np.ndarray:
    top_p, top_logp = sorted_top(records, k)
    return np.c_[top_p, top_logp]


class _Standardise:
    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(0)
        self.std = np.maximum(x.std(0), 1e-3)  # a constant column (e.g. collapsed scores) must not blow up

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((x - self.mean) / self.std, dtype=torch.float32)


class NSHNet(nn.Module):
    """Nasr et al.'s two-branch attack: scores branch + label branch -> membership logit."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.scores = nn.Sequential(
            nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU()
        )
        self.label = nn.Sequential(nn.Linear(num_classes, hidden // 2), nn.ReLU())
        self.joint = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, 1))

    def forward(self, scores: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.scores(scores), self.label(onehot)], 1)).squeeze(1)


def _mlp(n_in: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Flatten(0)
    )


def _fit(net: nn.Module, inputs: tuple[torch.Tensor, ...], y: np.ndarray, config: AttackConfig) -> nn.Module:
    """Full-batch training of ``net`` on ``inputs`` (on the net's device)."""
    target = torch.as_tensor(y, dtype=torch.float32, device=inputs[0].device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(config.epochs):  # full batch: the shadow sets hold a few hundred to a few thousand rows
        opt.zero_grad()
        loss_fn(net(*inputs), target).backward()
        opt.step()
    return net.eval()


def _onehot(labels: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(labels), k).float()


def learned_scores(
    attack: Attack,
    train: ShadowData,
    evaluate: ScoredRecords,
    *,
    config: AttackConfig,
    seed: int,
    device: torch.device = torch.device("cpu"),
) -> np.ndarray:
    """Fit ``attack`` on the shadow data, return its membership scores on ``evaluate``.

    The MLP attacks train on ``device``; the shadow attack is scikit-learn's logistic regression (CPU)."""
    records, y = train.joined()
    torch.manual_seed(seed)
    if attack is Attack.SHADOW:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(shadow_features(records), y)
        return model.decision_function(shadow_features(evaluate))
    if attack is Attack.ML_LEAKS:
        feats = mlleaks_features(records, config.top_k)
        scale = _Standardise(feats)
        net = _fit(_mlp(feats.shape[1], config.hidden).to(device), (scale(feats).to(device),), y, config)
        with torch.no_grad():
            return net(scale(mlleaks_features(evaluate, config.top_k)).to(device)).cpu().numpy().astype(np.float64)
    if attack is Attack.NSH:
        k = records.num_classes
        scale = _Standardise(records.logp)
        inputs = (scale(records.logp).to(device), _onehot(records.labels, k).to(device))
        net = _fit(NSHNet(k, config.hidden).to(device), inputs, y, config)
        with torch.no_grad():
            out = net(scale(evaluate.logp).to(device), _onehot(evaluate.labels, k).to(device))
        return out.cpu().numpy().astype(np.float64)
    raise ConfigError(f"{attack.value} is not a learned attack")


@dataclass(frozen=True, eq=False)
class AttackOutcome:
    metrics: MIAMetrics
    scores: np.ndarray  # membership scores on the evaluated set (members first, then non-members)


def run_attacks(
    members: ScoredRecords,
    nonmembers: ScoredRecords,
    shadow: ShadowData,
    *,
    attacks: tuple[Attack, ...] | None = None,
    extra: ExtraQueries = ExtraQueries(),
    config: AttackConfig = AttackConfig(),
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
) -> dict[Attack, AttackOutcome]:
    """Every attack's membership scores and metrics on ``members`` vs ``nonmembers`` (learned ones on ``device``).

    ``attacks`` defaults to every attack that ``extra`` supplies the queries for.
    """
    from privsplit.probes.calibrated_attacks import augmentation_score, lira_offline_score

    evaluate = ScoredRecords.concat(members, nonmembers)
    is_member = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    attacks = extra.available() if attacks is None else attacks
    out: dict[Attack, AttackOutcome] = {}
    for i, attack in enumerate(attacks):
        if attack is Attack.AUGMENTATION and extra.augmented is not None:
            scores = augmentation_score(extra.augmented, evaluate.labels)
        elif attack is Attack.LIRA_OFFLINE and extra.shadow is not None:
            scores = lira_offline_score(evaluate.probs, extra.shadow, evaluate.labels)
        elif attack.learned:
            with tiny_model_threads():
                scores = learned_scores(attack, shadow, evaluate, config=config, seed=seed + i, device=device)
        else:
            scores = threshold_score(attack, evaluate)
        out[attack] = AttackOutcome(mia_metrics(is_member, scores), scores)
    return out
