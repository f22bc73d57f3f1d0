"""SELENA-style self-distillation (Tang et al., USENIX Security 2022): the ``selena`` membership defence.

Phase 1 (*Split-AI*): ``teachers`` copies of the model, each trained (same recipe, no membership defence)
on the members minus a share of them; every member is left out of exactly ``held_out`` teachers, spread
evenly. A member's soft label is the mean of the softmax outputs of the teachers that never saw it: what
the ensemble says of it *as of a non-member*. Each teacher's scores are first temperature-scaled on
``reference`` (records no model trains on): a teacher's confidence on records it never saw is off (the
best-on-reference epochs of the Fashion-MNIST benchmark's teachers were under-confident: temperatures
0.5-0.9), and the members' targets would then be told apart from the deployed model's answers on
non-members by their confidence alone (calibration took the best raw attack from 0.665 to 0.646).

Phase 2 (self-distillation): the deployed model trains on every member with that soft label as its
target (soft-target cross-entropy). It fits each member to a non-member's answer, so what the returned
scores (and the labels alone) say of a member is what they would say of an unseen record: the
member/non-member gap that bounds every attack shrinks, while the model still learns from all members.

The teachers never leave this module: only the distilled model is deployed. Their count multiplies the
training time (``teachers`` + 1 trainings); on the purifier benchmark's targets see the README.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from privsplit.data import Dataset, Part, Split
from privsplit.models import SplitModel
from privsplit.train.adversarial import log, task_logits

__all__ = ["exclusions", "teacher_targets"]


def exclusions(n: int, teachers: int, held_out: int, *, seed: int) -> np.ndarray:
    """``[n, held_out]`` teacher indices each member is left out of: a seeded permutation, then member ``j`` (in
    that order) is left out of teachers ``j, j+1, .., j+held_out-1`` (mod ``teachers``), so every teacher leaves
    out the same share (``held_out / teachers``) of the members and no member is left out twice by one teacher."""
    order = np.random.default_rng(seed).permutation(n)
    slot = np.empty(n, dtype=np.int64)
    slot[order] = np.arange(n)
    return (slot[:, None] + np.arange(held_out)[None, :]) % teachers


def temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling (Guo et al., 2017): the ``T`` that minimises the cross-entropy of ``logits / T`` on
    held-out records, so a teacher's confidence on records it never saw matches how often it is right there."""
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().clamp(-3.0, 3.0).exp())


def teacher_targets(
    train: Callable[..., object],
    model: SplitModel,
    data: Dataset,
    split: Split,
    config,
    *,
    gather: Callable[[np.ndarray], torch.Tensor],
    seed: int,
    progress: bool,
    **train_kwargs,
) -> torch.Tensor:
    """Phase 1: train the teachers with ``train`` (``train_split_model``), return ``[len(data), classes]`` soft
    targets: the members' rows hold their left-out teachers' mean scores, every other row its one-hot label.

    A ``selena_label_weight`` share of each member's target is its true label: the teachers' answers alone are
    wrong wherever a record is hard for a model that never saw it, and a student trained on them learns those
    errors (on Fashion-MNIST with 500 members: 2.6 points of accuracy); a little of the label buys most of that
    back while members stay far less certain than an undefended model's.

    ``model`` is the untrained model (each teacher starts from a copy of it); ``config`` the run's recipe (the
    teachers train it without the membership defence); ``gather(index)`` gives normalised images."""
    from privsplit.train.membership_defense import MembershipDefense

    defense = config.membership_defense
    k, held = defense.selena_teachers, defense.selena_held_out
    members, reference = split[Part.MEMBERS], split[Part.REFERENCE]
    if len(reference) == 0:  # nothing held out to calibrate on: the temperature is fitted on the members
        reference = members
    x_ref, y_ref = gather(reference), torch.as_tensor(data.task_labels[reference])
    temps: list[float] = []
    out_of = exclusions(len(members), k, held, seed=seed)
    num_classes = data.num_classes(data.task)
    targets = torch.nn.functional.one_hot(torch.as_tensor(data.task_labels), num_classes).float()
    sums = torch.zeros(len(members), num_classes)
    plain = replace(config, membership_defense=MembershipDefense())
    for t in range(k):
        left_out = (out_of == t).any(1)
        sub = Split(
            n=split.n,
            seed=split.seed,
            fractions=split.fractions,
            indices={**split.indices, Part.MEMBERS: members[~left_out]},
        )
        log(f"selena: teacher {t + 1}/{k} on {int((~left_out).sum())} of {len(members)} members", progress)
        teacher = train(
            copy.deepcopy(model), data, sub, plain, seed=seed + 1000 * (t + 1), progress=False, **train_kwargs
        )
        idx = np.flatnonzero(left_out)
        t_ref = temperature(task_logits(teacher.model, x_ref, noise_seed=seed + 7).float(), y_ref)
        logits = task_logits(teacher.model, gather(members[idx]), noise_seed=seed + 11).float()
        sums[idx] += torch.softmax(logits / t_ref, dim=1)
        temps.append(t_ref)
    rows, teachers_say = torch.as_tensor(members), sums / held
    w = defense.selena_label_weight
    targets[rows] = (1 - w) * teachers_say + w * targets[rows]
    agree = float((teachers_say.argmax(1).numpy() == data.task_labels[members]).mean())
    log(
        f"selena: soft labels from {k} teachers ({held} per member, temperatures "
        f"{min(temps):.2f}-{max(temps):.2f} on reference): they name the true class for {agree:.3f}",
        progress,
    )
    return targets
