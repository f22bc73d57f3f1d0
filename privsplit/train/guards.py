"""Guards: adversaries for what training never named (the private attribute has its own, in ``adversarial``).

Two guards, each off at weight zero, with the attribute adversaries' architectures, warm-up and ``adv_steps``
steps per encoder step. The attribute guard is on by default where there is something to guard
(:func:`attributes_weight`) and re-initialised every adversarial epoch like the attribute adversaries; the identity
guard's adversaries are made once and keep learning across epochs:

- **Attribute guard** (``attributes_weight``): one multi-label head per adversary architecture reads every guarded
  attribute at once (binary cross-entropy per attribute). The encoder pushes each attribute's posterior towards
  ``p(attribute | task label)`` on members: what the task itself says about it may stay, the rest must go (the
  conditional target of the private attribute, applied to every other label).
- **Identity guard** (``identity_weight``): a metric adversary embeds the features and learns to pick, among the
  batch's other photos, the one of the same person (InfoNCE over same-identity pairs; 64-d unit embeddings,
  temperature 0.1). The encoder pushes that choice towards uniform: no photo looks more like its partner than like
  a stranger. Batches are built to hold such pairs (:func:`pair_batches`): every person with two or more member
  images gives pairs; the rest of a batch is filled with other members, and each member appears once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privsplit.errors import ConfigError
from privsplit.models import ATTRIBUTE_ATTACKERS

IDENTITY_LABEL = "identity"
# the presets' attribute guard where there are other attributes to guard (balanced; 3 CelebA seeds, no task cost)
DEFAULT_ATTRIBUTES_WEIGHT = 3.0
EMBEDDING_DIM = 64
TEMPERATURE = 0.1


@dataclass(frozen=True, eq=False)
class GuardLabels:
    """What the guards read, per dataset row: the guarded attributes (0/1 columns) and identities."""

    names: tuple[str, ...]
    attributes: np.ndarray | None  # (N, K) float32 0/1, None without an attribute guard
    identity: np.ndarray | None  # (N,) int64, None without an identity guard
    attributes_weight: float = 0.0  # the attribute guard's weight, its *auto* decided (:func:`attributes_weight`)


def guarded_attributes(labels, classes, *, choice: str, exclude: tuple[str, ...]) -> tuple[str, ...]:
    """The attribute names ``choice`` ('all' or A,B,...) names among binary labels, less ``exclude``."""
    binary = [n for n in sorted(labels) if n != IDENTITY_LABEL and len(classes[n]) == 2 and n not in exclude]
    if choice == "all":
        return tuple(binary)
    names = tuple(n.strip() for n in choice.split(",") if n.strip())
    unknown = [n for n in names if n not in binary]
    if unknown or not names:
        raise ConfigError(
            f"--guard-attributes: {unknown or choice!r} not binary attributes of this dataset besides the task and "
            f"the private attribute; choose 'all' or from {binary}"
        )
    return names


def attributes_weight(data, config) -> float:
    """The attribute guard's weight for ``data``: ``config.attributes_weight``, or where that is None (the
    presets' *auto*) :data:`DEFAULT_ATTRIBUTES_WEIGHT` on data with a private attribute and another binary label
    to guard, else 0 (digits, Fashion-MNIST, a run without ``--private``, a DP-SGD run: its own loop trains no
    adversaries)."""
    if config.attributes_weight is not None:
        return float(config.attributes_weight)
    if not data.private or config.membership_defense.is_dp:
        return 0.0
    return DEFAULT_ATTRIBUTES_WEIGHT if _other_attributes(data, config) else 0.0


def _other_attributes(data, config) -> tuple[str, ...]:
    """The binary labels ``config.guard_attributes`` names in ``data``, less the task and the private attribute."""
    exclude = tuple(n for n in (data.task, data.private) if n)
    return guarded_attributes(data.labels, data.classes, choice=config.guard_attributes, exclude=exclude)


def resolve_guards(data, config):
    """``config`` with the attribute guard's *auto* weight decided for ``data`` (what a run records)."""
    return config.with_(attributes_weight=attributes_weight(data, config))


def guard_labels(data, config) -> GuardLabels | None:
    """The labels ``config``'s guards need from ``data`` (None when no guard is on); a missing label raises."""
    weight = attributes_weight(data, config)
    if weight <= 0 and config.identity_weight <= 0:
        return None
    names: tuple[str, ...] = ()
    attributes = identity = None
    if weight > 0:
        names = _other_attributes(data, config)
        if not names:
            raise ConfigError(
                f"--attributes-weight: {data.source} has no binary attribute besides the task and the private "
                "attribute; drop --attributes-weight"
            )
        attributes = np.stack([np.asarray(data.labels[n]) for n in names], axis=1).astype(np.float32)
    if config.identity_weight > 0:
        if IDENTITY_LABEL not in data.labels:
            raise ConfigError(
                f"--identity-weight needs identities (CelebA's identity_CelebA.txt); {data.source} has none: "
                "drop --identity-weight"
            )
        identity = np.asarray(data.labels[IDENTITY_LABEL], dtype=np.int64)
    return GuardLabels(names=names, attributes=attributes, identity=identity, attributes_weight=weight)


def describe_guards(labels: GuardLabels | None) -> str:
    """The run header's words for its guards: which are on, over what, at what weight."""
    if labels is None:
        return "no guards"
    parts = []
    if labels.attributes is not None:
        parts.append(f"attribute guard on {len(labels.names)} labels (weight {labels.attributes_weight:g})")
    if labels.identity is not None:
        parts.append("identity guard")
    return ", ".join(parts)


def attribute_prior(task: np.ndarray, attributes: np.ndarray, num_task: int, *, balanced: bool = False) -> torch.Tensor:
    """``p(attribute = 1 | task)`` per task class (add-one smoothed): (num_task, K).

    ``balanced``: the same after each attribute's two classes are weighed to equal mass (:func:`positive_weight`):
    what an adversary trained with that weight outputs on features that carry the task and nothing else."""
    ones = np.ones((num_task, attributes.shape[1]))
    total = np.full((num_task, 1), 2.0)
    np.add.at(ones, task, attributes)
    np.add.at(total, task, 1.0)
    prior = ones / total
    if balanced:
        rate = _rate(attributes)
        pos, neg = prior / rate, (1 - prior) / (1 - rate)
        prior = pos / (pos + neg)
    return torch.as_tensor(prior, dtype=torch.float32)


def _rate(attributes: np.ndarray) -> np.ndarray:
    return (attributes.sum(0) + 1.0) / (len(attributes) + 2.0)


def positive_weight(attributes: np.ndarray) -> torch.Tensor:
    """Per attribute, the weight of its positives that gives both classes equal mass: ``(1 - rate) / rate``. A rare
    attribute (a hat on 5% of faces) then counts as much as a common one, as it does in the balanced accuracy an
    attacker is scored by; without it the guard's adversaries learn to say "no hat" and push for little."""
    rate = _rate(attributes)
    return torch.as_tensor((1 - rate) / rate, dtype=torch.float32)


def pair_batches(
    identity: np.ndarray, batch_size: int, rng: np.random.Generator, world: int = 1
) -> tuple[list[np.ndarray], list[int]]:
    """Batches of positions into ``identity`` (the members' identities) that start with same-person pairs.

    Every person with two or more images gives ``count // 2`` pairs of distinct images; pairs are dealt round robin
    over the epoch's batches, each batch laid out ``[a1, b1, a2, b2, ..., others]``; the other members fill the
    batches up to ``batch_size``. Returns the batches and the number of pairs at the start of each."""
    n = len(identity)
    order = rng.permutation(n)
    by_person: dict[int, list[int]] = {}
    for i in order:
        by_person.setdefault(int(identity[i]), []).append(int(i))
    pairs = [(g[j], g[j + 1]) for g in by_person.values() for j in range(0, len(g) - 1, 2)]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    paired = {i for p in pairs for i in p}
    others = [int(i) for i in order if int(i) not in paired]
    count = max(1, -(-n // batch_size))
    batches, counts = [], []
    cursor = 0
    for k in range(count):
        mine = pairs[k::count]
        head = [i for p in mine for i in p]
        fill = max(0, batch_size - len(head))
        batch = np.asarray(head + others[cursor : cursor + fill], dtype=np.int64)
        cursor += fill
        if len(batch) >= 2 * world:
            batches.append(batch)
            counts.append(len(mine))
    if cursor < len(others):  # pairs made some batches larger than batch_size: the rest in batches of their own
        rest = others[cursor:]
        for i in range(0, len(rest), batch_size):
            chunk = np.asarray(rest[i : i + batch_size], dtype=np.int64)
            if len(chunk) >= 2 * world:
                batches.append(chunk)
                counts.append(0)
    return batches, counts


class Guards:
    """The attribute and identity guards of one run; :meth:`reset` starts every adversarial epoch."""

    def __init__(
        self,
        shape,
        labels: GuardLabels,
        config,
        *,
        prior: torch.Tensor | None,
        device,
        dist,
        pos_weight: torch.Tensor | None = None,
    ) -> None:
        self.shape, self.config, self.device, self.dist = shape, config, device, dist
        self.attributes = None if labels.attributes is None else torch.as_tensor(labels.attributes).to(device)
        self.identity = labels.identity
        self.prior = None if prior is None else prior.to(device)
        self.pos_weight = None if pos_weight is None else pos_weight.to(device)  # None: unweighted (the first guards)
        self.attributes_weight = labels.attributes_weight
        self.attribute_nets: list[nn.Module] = []
        self.identity_nets: list[nn.Module] = []
        self.opt: torch.optim.Optimizer | None = None  # the attribute adversaries', new every epoch
        self.identity_opt: torch.optim.Optimizer | None = None  # the identity adversaries', kept across epochs

    @property
    def use_attributes(self) -> bool:
        return self.attributes is not None

    @property
    def use_identity(self) -> bool:
        return self.identity is not None

    def reset(self) -> None:
        """Fresh attribute adversaries for the epoch; the identity adversaries are made once and keep learning
        (a face metric needs more same-person pairs than one epoch holds: re-initialised, they never left chance)."""
        k = 0 if self.attributes is None else self.attributes.shape[1]
        names = self.config.adversaries
        self.attribute_nets = [ATTRIBUTE_ATTACKERS[n](self.shape, k).to(self.device) for n in names] if k else []
        self.opt = self._adam(self.attribute_nets)
        if self.use_identity and not self.identity_nets:
            self.identity_nets = [ATTRIBUTE_ATTACKERS[n](self.shape, EMBEDDING_DIM).to(self.device) for n in names]
            self.identity_opt = self._adam(self.identity_nets)

    def _adam(self, nets: list[nn.Module]) -> torch.optim.Optimizer | None:
        params = [p for m in nets for p in m.parameters()]
        return torch.optim.Adam(params, lr=self.config.adv_lr) if params else None

    @property
    def _optimisers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.opt, self.identity_opt) if o is not None]

    @property
    def modules(self) -> list[nn.Module]:
        return [*self.attribute_nets, *self.identity_nets]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]

    def requires_grad(self, flag: bool) -> None:
        for m in self.modules:
            m.requires_grad_(flag)

    def _pair_logits(self, net: nn.Module, z: torch.Tensor, pairs: int) -> torch.Tensor:
        e = F.normalize(net(z[: 2 * pairs]).float(), dim=1)
        return e[0::2] @ e[1::2].T / TEMPERATURE

    def step(self, z: torch.Tensor, rows: torch.Tensor, pairs: int) -> tuple[float | None, float | None]:
        """One optimiser step of every guard on detached features ``z`` of dataset ``rows`` (the first
        ``2 * pairs`` laid out as same-person pairs); returns (attribute BCE, identity InfoNCE), None where off."""
        for opt in self._optimisers:
            opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=z.device)
        bce = nce = None
        if self.attribute_nets:
            target = self.attributes[rows]
            terms = [
                F.binary_cross_entropy_with_logits(a(z).float(), target, pos_weight=self.pos_weight)
                for a in self.attribute_nets
            ]
            loss = loss + sum(terms)
            bce = float(sum(t.item() for t in terms) / len(terms))
        if self.identity_nets and pairs >= 2:
            arange = torch.arange(pairs, device=z.device)
            terms = []
            for net in self.identity_nets:
                logits = self._pair_logits(net, z, pairs)
                terms.append((F.cross_entropy(logits, arange) + F.cross_entropy(logits.T, arange)) / 2)
            loss = loss + sum(terms)
            nce = float(sum(t.item() for t in terms) / len(terms))
        if loss.requires_grad:
            loss.backward()
            self.dist.average_gradients(self.parameters())
            for opt in self._optimisers:
                opt.step()
        return bce, nce

    def privacy_loss(self, z: torch.Tensor, rows: torch.Tensor, task: torch.Tensor, pairs: int) -> torch.Tensor:
        """The encoder's guard term: ``attributes_weight`` x mean BCE towards p(attribute | task) plus
        ``identity_weight`` x cross-entropy of the identity adversaries' pair choice against uniform."""
        total = torch.zeros((), device=z.device)
        if self.attribute_nets:
            target = self.prior[task] if self.prior is not None else torch.full_like(self.attributes[rows], 0.5)
            for a in self.attribute_nets:
                total = total + self.attributes_weight * F.binary_cross_entropy_with_logits(a(z).float(), target)
        if self.identity_nets and pairs >= 2:
            for net in self.identity_nets:
                logits = self._pair_logits(net, z, pairs)
                uniform = -(F.log_softmax(logits, 1).mean(1) + F.log_softmax(logits.T, 1).mean(1)) / 2
                total = total + self.config.identity_weight * uniform.mean()
        return total
