"""Measured leakage at one cut of a trained network: trained attackers on a budget, held-out test, nulls beside.

For the activations at a candidate split (randomly projected to at most 1024 dimensions, as for dCor²), the split
profile asks the export gate's three questions (:mod:`privsplit.leakage_gate`):

* **private attribute** (when the run names one): logistic regression and an MLP trained on up to ``samples``
  images of the ``attacker`` part, scored on up to ``samples`` holdout images;
  ``excess = best balanced accuracy - max(chance, task floor, permutation null)``;
* **linkage** (when the data has identities): the linkage probe's cosine and LDA attackers on up to
  ``linkage_images`` images of people with two or more images, people split in disjoint halves;
  ``excess = best verification AUC - max(0.5, null)``;
* **every other attribute**: the same attackers per two-class label; the largest excess.

The activations are the trained network's, without channel noise (the limit of averaging frames), so a reading is
what the cut carries at most.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from privsplit.probes.feature_spec import AttributeAttacker, FeatureProbeSpec


@dataclass(frozen=True)
class AttackBudget:
    """What the split profile spends on trained attackers per split."""

    samples: int = 1000  # training images (attacker part) and test images (holdout), each at most
    linkage_images: int = 2000  # images of people with 2+ images for the linkage probe, at most
    attributes: str = "all"  # other attributes: 'all', 'none' or A,B
    epochs: int = 20  # MLP budget (early stopping on a validation slice)

    def spec(self, seed: int) -> FeatureProbeSpec:
        return FeatureProbeSpec(
            attackers=(AttributeAttacker.LOGISTIC, AttributeAttacker.MLP),
            curve=(1.0,),
            pooled=False,
            reconstruction=False,
            epochs=self.epochs,
            patience=min(5, self.epochs),
            logistic_cs=(0.01, 0.1, 1.0),
            cv_folds=2,
            seed=seed,
        )


@dataclass(frozen=True)
class Excess:
    """One question's best attacker beside its floor (chance / task floor, or 0.5) and null."""

    best: float
    floor: float
    null: float | None
    attacker: str

    @property
    def excess(self) -> float:
        return self.best - max(self.floor, self.null if self.null is not None else self.floor)


@dataclass(frozen=True)
class AttackSets:
    """Row indices of the run's data each question trains and tests on (drawn once, shared by every split)."""

    train: np.ndarray
    test: np.ndarray
    linkage: np.ndarray | None

    @classmethod
    def draw(cls, data, split, budget: AttackBudget, seed: int) -> AttackSets:
        from privsplit.data import Part

        rng = np.random.default_rng([seed, 0x5B11])

        def cap(index: np.ndarray, n: int) -> np.ndarray:
            return np.sort(rng.choice(index, size=n, replace=False)) if len(index) > n else np.sort(index)

        linkage = None
        if "identity" in data.labels:
            ids = np.asarray(data.labels["identity"])
            people, counts = np.unique(ids, return_counts=True)
            repeated = np.flatnonzero(np.isin(ids, people[counts > 1]))
            chosen = rng.permutation(np.unique(ids[repeated]))
            keep, total = [], 0
            for person in chosen:  # whole people, until the budget is reached
                rows = repeated[ids[repeated] == person]
                if total + len(rows) > budget.linkage_images:
                    break
                keep.append(rows)
                total += len(rows)
            linkage = np.sort(np.concatenate(keep)) if keep else None
        return cls(
            train=cap(split[Part.ATTACKER], budget.samples),
            test=cap(split[Part.HOLDOUT], budget.samples),
            linkage=linkage,
        )


def other_attributes(data, names: str) -> tuple[str, ...]:
    """The two-class labels other than the task, the private attribute and identity (``names``: all|none|A,B)."""
    from privsplit.probes.attribute_sweep import resolve_attributes

    if names.strip() == "none":
        return ()
    candidates = [k for k, c in data.classes.items() if k not in (data.task, data.private, "identity") and len(c) == 2]
    if not candidates and names.strip() == "all":
        return ()
    return tuple(n for n in resolve_attributes(data, names) if n != data.private)


def attribute_excess(train, test, data, sets: AttackSets, name: str, spec: FeatureProbeSpec) -> Excess:
    from privsplit.probes.attribute_attack import attack_attribute

    y = np.asarray(data.labels[name])
    task = data.task_labels
    leak = attack_attribute(
        {"attacker": (train, y[sets.train])},
        (task[sets.train], y[sets.train]),
        test,
        y[sets.test],
        task[sets.test],
        name=name,
        classes=tuple(data.classes[name]),
        num_task_classes=data.num_classes(data.task),
        spec=spec,
        progress=False,
    )
    return Excess(
        best=float(leak.balanced_accuracy),
        floor=max(float(leak.chance), float(leak.task_floor)),
        null=leak.permutation_null_mean,
        attacker=leak.best,
    )


def measure_cut(
    activations: Callable[[np.ndarray], np.ndarray],
    data,
    split,
    sets: AttackSets,
    *,
    attributes: tuple[str, ...],
    spec: FeatureProbeSpec,
    seed: int,
) -> tuple[Excess | None, Excess | None, tuple[str, Excess] | None]:
    """(private, linkage, worst other attribute) at one cut; ``activations(rows)`` gives its features."""
    from privsplit.data import Part
    from privsplit.probes.linkage import LinkageSpec, probe_linkage

    private = worst = linkage = None
    if data.private is not None or attributes:
        train, test = activations(sets.train), activations(sets.test)
        if data.private is not None:
            private = attribute_excess(train, test, data, sets, data.private, spec)
        for name in attributes:
            got = attribute_excess(train, test, data, sets, name, spec)
            if worst is None or got.excess > worst[1].excess:
                worst = (name, got)
    if sets.linkage is not None:
        testable = ~np.isin(sets.linkage, split[Part.MEMBERS])
        result = probe_linkage(
            activations(sets.linkage),
            np.asarray(data.labels["identity"])[sets.linkage],
            LinkageSpec(seed=seed),
            testable=testable,
        )
        linkage = Excess(best=result.best.auc, floor=0.5, null=result.null_auc, attacker=result.best.attacker)
    return private, linkage, worst
