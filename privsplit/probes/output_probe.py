"""The output-leakage probe: membership inference and model inversion on the scores the cloud returns.

Everything is measured twice, side by side: on the raw confidence vectors and on the purified ones.
With the purifier the attacker is *adaptive*: every score it sees — the target's on the evaluated
records, the target's on its own images (inversion training) and its shadow models' (attack
training) — is purified, as for a client of the deployed service that knows the defence.

Data: balanced ``members`` vs ``holdout`` sets (the larger part is subsampled with the seed); the
attacker's own data is the ``attacker`` part: split in halves into shadow-in/shadow-out for shadow
classifiers trained with the run's own recipe, and used whole as the inversion decoder's training set.
Scores are those of the deployed system: encoder, channel noise (seeded: ``noise_seed``), server
layers, softmax (float; the wire's int8 quantization of the features is not applied here).

Beyond each record's own vector, two attacks query more (:mod:`privsplit.probes.calibrated_attacks`):
the label-only ``augmentation`` attack gets the service's scores on flipped / shifted copies of every
evaluated record (``spec.augment``), and offline LiRA the shadow models' scores on every evaluated
record. Both pass through the purifier like everything else the attacker sees.

Utility figures (accuracy, label agreement, distortion) are on the whole ``holdout`` part (what
deployment traffic looks like), with ``*_members`` twins on the whole ``members`` part.
``distortion_pct`` = 100 x mean over records of the L1 distance ``sum_k |p_k - q_k|`` between the
original and the purified vector (range 0-200; the total-variation distance is half of it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from privsplit.errors import RunError
from privsplit.probes._fit import use_device
from privsplit.probes.calibrated_attacks import DEFAULT_AUGMENTATIONS, augment
from privsplit.probes.inversion import invert
from privsplit.probes.membership import ExtraQueries, ScoredRecords, ShadowData, run_attacks
from privsplit.probes.mia_metrics import best_auc_null, label_floor
from privsplit.probes.output_results import MIAReport, OutputArrays, OutputProbeResult, OutputProbeSpec
from privsplit.train.shadow import train_shadow

if TYPE_CHECKING:  # pragma: no cover
    import torch

MIN_PER_SIDE = 50  # members and non-members each, for a balanced test
MIN_ATTACKER = 20  # attacker records (shadow-in + shadow-out, inversion training)
N_EXAMPLES = 8

__all__ = ["OutputProbeSpec", "OutputProbeResult", "ServiceView", "observe", "probe_outputs"]


@dataclass(frozen=True, eq=False)
class ServiceView:
    """What the service returns on every record the probe uses, before any purification."""

    members: ScoredRecords  # balanced evaluation set
    nonmembers: ScoredRecords
    member_images: np.ndarray
    nonmember_images: np.ndarray
    members_all: ScoredRecords  # whole parts, for the utility figures
    holdout_all: ScoredRecords
    attacker: ScoredRecords  # the target's scores on the attacker's own images
    attacker_images: np.ndarray
    shadow: ShadowData  # shadow classifiers' scores on their own members / non-members
    noise_seed: int
    extra: ExtraQueries = ExtraQueries()  # on the evaluated records: augmented copies, shadow models' scores

    def purified(self, purify) -> ServiceView:
        def p(r: ScoredRecords) -> ScoredRecords:
            return ScoredRecords(purify(r.probs), r.labels)

        def stack(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.stack([purify(x) for x in a])

        return replace(
            self,
            members=p(self.members),
            nonmembers=p(self.nonmembers),
            members_all=p(self.members_all),
            holdout_all=p(self.holdout_all),
            attacker=p(self.attacker),
            shadow=ShadowData(p(self.shadow.members), p(self.shadow.nonmembers)),
            extra=ExtraQueries(augmented=stack(self.extra.augmented), shadow=stack(self.extra.shadow)),
        )


def observe(run, spec: OutputProbeSpec = OutputProbeSpec(), *, device: torch.device | str | None = None) -> ServiceView:
    """Score every part with the run's model and train the attacker's shadow classifiers (both on ``device``)."""
    from privsplit.data import Part
    from privsplit.progress import progress_bar

    run.check()
    config = run.config()
    split = run.split()
    members, holdout, attacker = split[Part.MEMBERS], split[Part.HOLDOUT], split[Part.ATTACKER]
    n = min(len(members), len(holdout))
    if spec.max_per_side is not None:
        n = min(n, spec.max_per_side)
    if n < MIN_PER_SIDE:
        raise RunError(
            f"{run.path}'s split holds {len(members)} members and {len(holdout)} holdout records: a balanced "
            f"membership test needs at least {MIN_PER_SIDE} of each; train with more data (--limit) or larger "
            "members/holdout fractions (--split)"
        )
    if len(attacker) < MIN_ATTACKER:
        raise RunError(
            f"{run.path}'s split holds {len(attacker)} attacker records: the shadow models and the inversion "
            f"decoder need at least {MIN_ATTACKER}; use a larger attacker fraction (--split)"
        )
    rng = np.random.default_rng(spec.seed)
    eval_m = np.sort(rng.choice(members, n, replace=False))
    eval_n = np.sort(rng.choice(holdout, n, replace=False))
    data = run.dataset()
    device = use_device(device)
    model = run.load_split_model().to(device)
    labels = data.task_labels
    noise_seed = spec.resolved_noise_seed

    def scored(idx: np.ndarray, salt: int) -> ScoredRecords:
        return ScoredRecords(model.scores(data.images[idx], noise_seed=noise_seed + salt), labels[idx])

    members_all = scored(members, 0)
    holdout_all = scored(holdout, 1)
    pos_m = np.searchsorted(members, eval_m)
    pos_n = np.searchsorted(holdout, eval_n)
    eval_images = data.images[np.r_[eval_m, eval_n]]
    shadow_in, shadow_out, shadow_eval = [], [], []
    for s in progress_bar(range(spec.shadows), desc="shadow models", enabled=spec.progress):
        order = np.random.default_rng(spec.seed + 1000 + s).permutation(attacker)
        half = len(order) // 2
        in_idx, out_idx = order[:half], order[half:]
        shadow = train_shadow(
            config, data, in_idx, out_idx, seed=spec.seed + 2000 + s, epochs=spec.shadow_epochs, device=device
        )
        in_scores = shadow.scores(data.images[in_idx], noise_seed=noise_seed + 10 + s)
        out_scores = shadow.scores(data.images[out_idx], noise_seed=noise_seed + 20 + s)
        shadow_in.append(ScoredRecords(in_scores, labels[in_idx]))
        shadow_out.append(ScoredRecords(out_scores, labels[out_idx]))
        shadow_eval.append(shadow.scores(eval_images, noise_seed=noise_seed + 30 + s))
    augmented = None
    if spec.augment:
        augmented = np.stack(
            [
                model.scores(augment(eval_images, a), noise_seed=noise_seed + 40 + i)
                for i, a in enumerate(DEFAULT_AUGMENTATIONS)
            ]
        )
    return ServiceView(
        members=members_all.subset(pos_m),
        nonmembers=holdout_all.subset(pos_n),
        member_images=data.images[eval_m],
        nonmember_images=data.images[eval_n],
        members_all=members_all,
        holdout_all=holdout_all,
        attacker=scored(attacker, 2),
        attacker_images=data.images[attacker],
        shadow=ShadowData(ScoredRecords.concat(*shadow_in), ScoredRecords.concat(*shadow_out)),
        noise_seed=noise_seed,
        extra=ExtraQueries(augmented=augmented, shadow=np.stack(shadow_eval) if shadow_eval else None),
    )


def _mia(view: ServiceView, spec: OutputProbeSpec, device: torch.device) -> tuple[MIAReport, dict[str, np.ndarray]]:
    outcomes = run_attacks(
        view.members,
        view.nonmembers,
        view.shadow,
        extra=view.extra,
        config=spec.attack,
        seed=spec.seed,
        device=device,
    )
    floor = label_floor(float(view.members.correct.mean()), float(view.nonmembers.correct.mean()))
    scores = {a.value: o.scores for a, o in outcomes.items()}
    null = best_auc_null(scores, len(view.members), seed=spec.seed)
    report = MIAReport.from_metrics(floor, {a.value: o.metrics for a, o in outcomes.items()}, null=null)
    return report, scores


def _inversion(view: ServiceView, spec: OutputProbeSpec, device: torch.device):
    return invert(
        view.attacker.probs,
        view.attacker_images,
        (view.members.probs, view.member_images),
        (view.nonmembers.probs, view.nonmember_images),
        config=spec.inversion,
        seed=spec.seed,
        n_examples=N_EXAMPLES,
        progress=spec.progress,
        device=device,
    )


def _l1_pct(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.abs(p.astype(np.float64) - q.astype(np.float64)).sum(1).mean() * 100.0)


def probe_outputs(
    run,
    spec: OutputProbeSpec = OutputProbeSpec(),
    *,
    purifier=None,
    view: ServiceView | None = None,
    device: torch.device | str | None = None,
) -> OutputProbeResult:
    """Membership inference and inversion on ``run``'s returned scores, without and with its purifier.

    The target scores, the shadow models train and the attacks fit on ``device`` (a ``torch.device``; default
    the CPU, the reference; the result records it). The purifier itself runs on the CPU, as deployed.

    ``purifier`` defaults to the run's own (``privsplit train-purifier``); a run without one raises
    :class:`RunError`. ``view`` reuses an :func:`observe` result (the benchmark compares purifiers).
    """
    from privsplit.models.purifier import load_purifier, purifier_training_facts, purify_numpy

    facts: dict = {}
    if purifier is None:
        purifier = load_purifier(run)
        if purifier is None:
            raise RunError(
                f"{run.path} has no purifier: train one with `privsplit train-purifier {run.path}` "
                "(the probe compares the scores without and with it)"
            )
        facts = purifier_training_facts(run)
    device = use_device(device)
    view = view if view is not None else observe(run, spec, device=device)
    pure = view.purified(lambda p: purify_numpy(purifier, p))

    mia, mia_scores = _mia(view, spec, device)
    mia_p, mia_scores_p = _mia(pure, spec, device)
    inv, inv_p = _inversion(view, spec, device), _inversion(pure, spec, device)

    def acc(r: ScoredRecords) -> float:
        return float(r.correct.mean())

    def agree(a: ScoredRecords, b: ScoredRecords) -> float:
        return float((a.probs.argmax(1) == b.probs.argmax(1)).mean())

    is_member = np.r_[np.ones(len(view.members)), np.zeros(len(view.nonmembers))]
    arrays = OutputArrays(
        is_member=is_member,
        scores={
            **{f"raw/{k}": v for k, v in mia_scores.items()},
            **{f"purified/{k}": v for k, v in mia_scores_p.items()},
        },
        top_prob={
            "raw": np.r_[view.members.probs.max(1), view.nonmembers.probs.max(1)],
            "purified": np.r_[pure.members.probs.max(1), pure.nonmembers.probs.max(1)],
        },
        images=np.concatenate([view.member_images[:N_EXAMPLES], view.nonmember_images[:N_EXAMPLES]]),
        reconstructions={
            "raw": np.concatenate([inv.reconstructions_members, inv.reconstructions_nonmembers]),
            "purified": np.concatenate([inv_p.reconstructions_members, inv_p.reconstructions_nonmembers]),
        },
    )
    return OutputProbeResult(
        run=str(run.path),
        spec=spec,
        n_members=len(view.members),
        n_nonmembers=len(view.nonmembers),
        n_shadow_train=len(view.shadow.members) + len(view.shadow.nonmembers),
        noise_seed=view.noise_seed,
        accuracy=acc(view.holdout_all),
        accuracy_members=acc(view.members_all),
        accuracy_purified=acc(pure.holdout_all),
        accuracy_members_purified=acc(pure.members_all),
        label_agreement=agree(view.holdout_all, pure.holdout_all),
        label_agreement_members=agree(view.members_all, pure.members_all),
        distortion_pct=_l1_pct(view.holdout_all.probs, pure.holdout_all.probs),
        distortion_pct_members=_l1_pct(view.members_all.probs, pure.members_all.probs),
        mia=mia,
        mia_purified=mia_p,
        inversion=inv.metrics,
        inversion_purified=inv_p.metrics,
        purifier={"config": purifier.config.to_json(), "training": facts},
        arrays=arrays,
        device=str(device),
    )
