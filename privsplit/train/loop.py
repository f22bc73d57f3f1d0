"""The adversarial training loop of Privacy Partitioning, on any device and in any number of processes.

Encoder + server layers minimise the task loss while adversaries that see the (noisy) features try
to infer the private attribute and/or reconstruct the input; the two sides are updated in
alternation. What made the post-hoc attacker fail in our measurements (see docs/methods.md): a
narrow bottleneck, Gaussian channel noise, adversaries as strong and as varied as the attackers
(the probe's own CNN and linear architectures, re-initialised every epoch with a warm-up, several
steps per encoder step), and entropy maximisation instead of -CE. ``config.epochs`` joint epochs are
followed by ``config.head_finetune_epochs`` epochs that retrain the server layers alone.

Every epoch reseeds torch and numpy from ``(seed, epoch)``: all ranks draw the same batches and the
same fresh adversaries, and a resumed run continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privsplit.data import Dataset, Part, Split
from privsplit.errors import ConfigError
from privsplit.models import SplitModel, feature_shape
from privsplit.progress import progress_bar
from privsplit.train import checkpoint as ckpt
from privsplit.train.adversarial import (
    EpochStats,
    TrainResult,
    _Adversaries,
    conditional_prior,
    describe,
    linear_attack,
    log,
    next_adversary_weight,
    predict,
    recalibrate_batchnorm,
    task_floor,
)
from privsplit.train.config import AdversaryTarget, TrainConfig
from privsplit.train.device import BatchFeeder, DevicePolicy
from privsplit.train.distributed import DistContext
from privsplit.train.guards import Guards, attribute_prior, guard_labels, pair_batches, positive_weight
from privsplit.train.membership_defense import DefenseKind, task_loss
from privsplit.train.selena import teacher_targets


@dataclass(frozen=True)
class Checkpointing:
    """Where epoch checkpoints go, what a resumed run must match, and whether to resume."""

    run_path: Path
    identity: dict[str, Any]
    resume: bool = False


@dataclass
class _State:
    epoch: int = 0  # epochs done, joint and head together
    history: list[EpochStats] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    selected: int = 0
    adv_weight: float | None = None  # the leakage-budget controller's weight for the next epoch
    teacher: dict[str, torch.Tensor] | None = None  # the warm-start model (distillation)
    warm_accuracy: float | None = None  # its reference accuracy (the utility budget's yardstick)


class _Joint(nn.Module):
    """Encoder, channel noise and server layers in one forward, so DDP wraps one module."""

    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.model.features(x)
        return z, self.model.head(z)


def _reseed(seed: int, epoch: int) -> np.random.Generator:
    torch.manual_seed(seed * 1_000_003 + epoch)
    return np.random.default_rng([seed, epoch])


def _rank_stream(seed: int, epoch: int, dist: DistContext) -> None:
    """From here on each rank draws its own channel noise (and flips): after :func:`_reseed` every rank holds the
    same torch stream, so the ranks' shards of one global batch would get identical noise, which a single process
    never draws. What must be equal on every rank (the adversaries' re-initialisation, the batches) is drawn
    before; one process keeps the epoch's stream unchanged."""
    if dist.world > 1:
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, dist.rank]).generate_state(1)[0]))


def _batches(n: int, batch_size: int, rng: np.random.Generator, world: int) -> list[np.ndarray]:
    """Global batches of a seeded permutation; every rank's shard keeps at least 2 samples (BatchNorm)."""
    order = rng.permutation(n)
    chunks = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [c for c in chunks if len(c) >= 2 * world]


def _flips(n: int, hflip: bool) -> torch.Tensor | None:
    return (torch.rand(n) < 0.5) if hflip else None


def _augment(x: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    if flips is None:
        return x
    flips = flips.to(x.device)
    return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)


def train_split_model(
    model: SplitModel,
    data: Dataset,
    split: Split,
    config: TrainConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    policy: DevicePolicy | None = None,
    dist: DistContext = DistContext(),
    checkpointing: Checkpointing | None = None,
    targets: torch.Tensor | None = None,
) -> TrainResult:
    """Train ``model`` on the ``members`` part; select on ``reference``; return it on the CPU with its history.

    ``targets`` (``[len(data), classes]`` probabilities): soft task targets instead of the labels; the ``selena``
    membership defence trains its teachers first and passes theirs."""
    if config.membership_defense.is_dp:  # another optimiser and sampler: its own loop
        from privsplit.train.dpsgd import train_dp

        if checkpointing is not None and checkpointing.resume:
            raise ConfigError("a dp-sgd run keeps no epoch checkpoints (its accountant would restart): drop --resume")

        return train_dp(model, data, split, config, seed=seed, progress=progress, policy=policy, dist=dist)
    policy = policy or DevicePolicy(torch.device("cpu"))
    device = policy.device
    policy.prepare()
    model.to(device)
    members, reference = split[Part.MEMBERS], split[Part.REFERENCE]
    if len(reference) == 0:  # selection falls back on the members themselves
        reference = members
    feeder = BatchFeeder(data.images, model.mean.flatten(), model.std.flatten(), policy)
    y_all = torch.as_tensor(data.task_labels).to(device)
    p_all = torch.as_tensor(data.private_labels).to(device) if data.private is not None else None
    x_ref, y_ref = feeder.gather(reference), y_all[torch.as_tensor(reference).to(device)]
    if targets is None and config.membership_defense.kind is DefenseKind.SELENA:
        targets = teacher_targets(
            train_split_model,
            model,
            data,
            split,
            config,
            gather=feeder.gather,
            seed=seed,
            progress=progress,
            policy=policy,
            dist=dist,
        )
    hflip = config.hflip if config.hflip is not None else data.source.split(":")[0] in ("celeba", "utkface")
    num_private = data.num_classes(data.private) if data.private is not None else None
    prior = None
    if num_private is not None:
        prior = conditional_prior(
            data.task_labels[members], data.private_labels[members], data.num_classes(data.task), num_private
        )
    ctx = _Loop(
        model,
        config,
        policy,
        dist,
        feeder,
        members,
        y_all,
        p_all,
        x_ref,
        y_ref,
        hflip,
        seed,
        progress,
        reference=reference,
        prior=prior,
        targets=targets,
    )
    adv = _Adversaries(model, config, num_private, dist=dist, prior=prior)
    ctx.guards = _guards(model, data, members, config, dist, device)

    params = list(model.encoder.parameters()) + list(model.head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(members) / config.batch_size))
    total_steps = config.epochs * steps_per_epoch + 1
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.15)
    head_opt = torch.optim.AdamW(model.head.parameters(), lr=config.lr * 0.25, weight_decay=config.weight_decay)

    state = _State(selected=config.epochs)
    if checkpointing is not None and checkpointing.resume:
        state = _restore(checkpointing, model, opt, sched, head_opt, config)
        log(f"  resumed after epoch {state.epoch} from {ckpt.checkpoint_dir(checkpointing.run_path)}", progress)

    if state.epoch <= config.epochs:  # joint epochs left, or the switch to the head fine-tune
        joint = dist.wrap(_Joint(model), device)
        if state.adv_weight is not None:
            adv.weight = state.adv_weight
        if state.teacher is not None:
            ctx.teacher = _Teacher(model, state.teacher)
        ctx.warm_accuracy = state.warm_accuracy
        for epoch in range(state.epoch + 1, config.epochs + 1):
            stats = ctx.joint_epoch(epoch, joint, adv, opt, sched)
            state.adv_weight, state.warm_accuracy = adv.weight, ctx.warm_accuracy
            state.teacher = ctx.teacher.state_dict() if ctx.teacher is not None else None
            # The unprotected baseline picks its best epoch on reference; a protected encoder keeps its
            # last epoch (an early epoch is a less private one) and selects among head fine-tune epochs.
            if not config.protected and stats.reference_accuracy > state.best_acc:
                state.best_acc, state.best_epoch = stats.reference_accuracy, epoch
                state.best_state = copy.deepcopy(model.state_dict())
            _end_epoch(state, stats, checkpointing, dist, model, opt, sched, head_opt, progress)
        del joint
        if state.best_state is not None:
            model.load_state_dict(state.best_state)
            state.selected = state.best_epoch
        if config.head_finetune_epochs > 0:  # the fine-tune's starting point competes too
            state.best_acc, state.best_epoch = ctx.reference_accuracy(), config.epochs
            state.best_state = copy.deepcopy(model.head.state_dict())
    if config.head_finetune_epochs > 0:
        model.encoder.eval()
        model.encoder.requires_grad_(False)
        head = dist.wrap(model.head, device)
        for epoch in range(state.epoch + 1, config.epochs + config.head_finetune_epochs + 1):
            stats = ctx.head_epoch(epoch, head, head_opt)
            if stats.reference_accuracy > state.best_acc:
                state.best_acc, state.best_epoch = stats.reference_accuracy, epoch
                state.best_state = copy.deepcopy(model.head.state_dict())
            _end_epoch(state, stats, checkpointing, dist, model, opt, sched, head_opt, progress)
        del head
        model.head.load_state_dict(state.best_state)
        model.encoder.requires_grad_(True)
        state.selected = state.best_epoch
    model.eval().cpu()
    return TrainResult(model=model, history=tuple(state.history), selected_epoch=state.selected)


def _guards(model: SplitModel, data: Dataset, members: np.ndarray, config: TrainConfig, dist, device) -> Guards | None:
    """The run's guards (None when none is on); their labels and the attribute prior on members."""
    labels = guard_labels(data, config)
    if labels is None:
        return None
    if labels.identity is not None and dist.world > 1:
        raise ConfigError("--identity-weight trains in one process (its batches hold same-person pairs): drop --nproc")
    prior = pos_weight = None
    if labels.attributes is not None:
        attributes, balanced = labels.attributes[members], config.attributes_balanced
        prior = attribute_prior(data.task_labels[members], attributes, data.num_classes(data.task), balanced=balanced)
        pos_weight = positive_weight(attributes) if balanced else None
    shape = feature_shape(model.config)
    return Guards(shape, labels, config, prior=prior, device=device, dist=dist, pos_weight=pos_weight)


def _end_epoch(state, stats, checkpointing, dist, model, opt, sched, head_opt, progress) -> None:
    state.epoch = stats.epoch
    state.history.append(stats)
    log(describe(stats), progress)
    if checkpointing is None:
        return
    if dist.is_main:
        _save(checkpointing, state, model, opt, sched, head_opt)
    dist.barrier()
    if ckpt.stop_requested(stats.epoch):
        raise ckpt.TrainingStopped(
            f"stopped after epoch {stats.epoch} as {ckpt.STOP_ENV} asks; "
            f"continue with --resume --out {checkpointing.run_path}"
        )


def _save(checkpointing, state: _State, model, opt, sched, head_opt) -> None:
    from dataclasses import asdict

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_meta = ckpt.optimizer_state(opt, "opt")
    head_t, head_meta = ckpt.optimizer_state(head_opt, "head_opt")
    tensors.update(opt_t)
    tensors.update(head_t)
    if state.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in state.best_state.items()})
    if state.teacher is not None:
        tensors.update({f"teacher.{k}": v for k, v in state.teacher.items()})
    meta = {
        "identity": checkpointing.identity,
        "epoch": state.epoch,
        "history": [asdict(h) for h in state.history],
        "best_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "selected": state.selected,
        "optimizer": opt_meta,
        "head_optimizer": head_meta,
        "scheduler": sched.state_dict(),
        "adv_weight": state.adv_weight,
        "warm_accuracy": state.warm_accuracy,
    }
    ckpt.save_checkpoint(checkpointing.run_path, meta, tensors)


def _restore(checkpointing, model, opt, sched, head_opt, config: TrainConfig) -> _State:
    saved = ckpt.load_checkpoint(checkpointing.run_path, checkpointing.identity)
    meta = saved.meta
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in saved.group("model").items()})
    ckpt.load_optimizer_state(opt, saved, "opt", meta["optimizer"])
    ckpt.load_optimizer_state(head_opt, saved, "head_opt", meta["head_optimizer"])
    sched.load_state_dict(meta["scheduler"])
    best = saved.group("best")
    teacher = saved.group("teacher")
    epoch = int(meta["epoch"])
    if epoch > config.epochs + config.head_finetune_epochs:
        raise ckpt.RunError(
            f"--resume: {checkpointing.run_path}'s checkpoint is after its last epoch; train without --resume"
        )
    return _State(
        epoch=epoch,
        history=[EpochStats(**h) for h in meta["history"]],
        best_acc=float(meta["best_acc"]),
        best_epoch=int(meta["best_epoch"]),
        best_state={k: v.to(device) for k, v in best.items()} if best else None,
        selected=int(meta["selected"]),
        adv_weight=meta.get("adv_weight"),
        warm_accuracy=meta.get("warm_accuracy"),
        teacher={k: v.to(device) for k, v in teacher.items()} if teacher else None,
    )


class _Teacher:
    """A frozen copy of the model at the end of the warm start: its task logits for a batch (noise included)."""

    def __init__(self, model: SplitModel, state: dict[str, torch.Tensor] | None = None) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        if state is not None:
            self.model.load_state_dict(state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Loop:
    """One joint or head epoch; everything the two share."""

    def __init__(
        self,
        model,
        config,
        policy,
        dist,
        feeder,
        members,
        y_all,
        p_all,
        x_ref,
        y_ref,
        hflip,
        seed,
        progress,
        *,
        reference,
        prior,
        targets=None,
    ):
        self.model, self.config, self.policy, self.dist, self.feeder = model, config, policy, dist, feeder
        self.members, self.y_all, self.p_all, self.x_ref, self.y_ref = members, y_all, p_all, x_ref, y_ref
        self.hflip, self.seed, self.progress = hflip, seed, progress
        self.device = policy.device
        self.task_loss = task_loss(config.membership_defense)  # cross-entropy, or a membership defence's
        self.teacher: _Teacher | None = None  # the warm-start model, distilled into the adversarial epochs
        self.warm_accuracy: float | None = None  # reference accuracy at the end of the warm start
        self.reference: np.ndarray = reference  # where the leakage-budget controller reads
        self.prior: torch.Tensor | None = prior  # p(private | task) on members: what the conditional target aims at
        self._floor: float | None = None
        self.targets: torch.Tensor | None = None if targets is None else targets.to(self.device)
        self.guards: Guards | None = None  # attribute and identity guards (privsplit.train.guards)

    def _labels(self, index: np.ndarray):
        idx = torch.as_tensor(index).to(self.device)
        return self.y_all[idx], (self.p_all[idx] if self.p_all is not None else None)

    def _task_ce(self, logits: torch.Tensor, y: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """Cross-entropy against the labels, or against the soft targets where the run has them (selena)."""
        if self.targets is None:
            return F.cross_entropy(logits, y)
        return F.cross_entropy(logits, self.targets[torch.as_tensor(index).to(self.device)])

    def reference_accuracy(self) -> float:
        """Rank 0's figure, broadcast: every rank takes the same model-selection decision."""
        acc = float((predict(self.model, self.x_ref, noise_seed=self.seed + 7) == self.y_ref.cpu().numpy()).mean())
        return self.dist.broadcast_value(acc)

    def _recalibrate(self, rng, part=None) -> None:
        """BatchNorm re-estimation on rank 0, broadcast (the next epoch reseeds, so the ranks' rngs realign)."""
        if self.dist.is_main:
            gather = (lambda i: self.feeder.gather(self.members[i]), len(self.members))
            recalibrate_batchnorm(self.model, gather, rng=rng, part=part)
        self.dist.broadcast_module(self.model)

    def joint_epoch(self, epoch: int, joint, adv: _Adversaries, opt, sched) -> EpochStats:
        config, model, dist, feeder = self.config, self.model, self.dist, self.feeder
        rng = _reseed(self.seed, epoch)
        model.train()
        # a warm start trains the task alone first
        adversarial = (adv.active or self.guards is not None) and epoch > config.warmup
        guards = self.guards if adversarial else None
        teacher = self.teacher if adversarial and config.distill_weight > 0 else None
        if adversarial:
            adv.reset()
        if guards is not None:
            guards.reset()
        _rank_stream(self.seed, epoch, dist)
        if adversarial and adv.active:
            adv.requires_grad(True)
            # warm the fresh adversaries up on features of a sample computed once (cheap: no
            # encoder pass per warm-up step), then keep them in step with the encoder below
            pool = self.members[rng.permutation(len(self.members))[: 8 * config.batch_size]]
            with torch.no_grad(), self.policy.autocast():
                chunks = [pool[i : i + 256] for i in range(0, len(pool), 256)]
                z_pool = torch.cat(
                    [model.features(_augment(feeder.gather(c), _flips(len(c), self.hflip))) for c in chunks]
                ).float()
            for _ in range(config.adv_warmup_steps):
                j = dist.shard(rng.integers(0, len(pool), size=min(config.batch_size, len(pool))))
                _, p = self._labels(pool[j])
                with self.policy.autocast():
                    px = feeder.pixels(pool[j]) if adv.use_rec else None
                    adv.step(z_pool[torch.as_tensor(j).to(self.device)], p, px)
        sums = np.zeros(8)  # ce*n, priv*n, correct, n, adv_loss, adv_acc, rec, adv_n
        guard_sums = np.zeros(4)  # attribute BCE, its steps, identity NCE, its steps
        if self.guards is not None and self.guards.use_identity:  # batches that hold same-person pairs
            batches, pairs = pair_batches(self.guards.identity[self.members], config.batch_size, rng, dist.world)
        else:
            batches = _batches(len(self.members), config.batch_size, rng, dist.world)
            pairs = [0] * len(batches)
        flips = [_flips(len(b), self.hflip) for b in batches]  # one draw per global batch; each rank takes its shard
        shards = [dist.shard(self.members[b]) for b in batches]
        if guards is not None:
            self._warm_guards(guards, shards, pairs)
        bar = progress_bar(range(len(batches)), desc=f"epoch {epoch}/{config.epochs}", enabled=self.progress)
        for k, (idx, x) in zip(bar, feeder.stream(shards)):
            x = _augment(x, dist.shard(flips[k]) if flips[k] is not None else None)
            y, p = self._labels(idx)
            px = feeder.pixels(idx) if adv.use_rec else None
            rows = torch.as_tensor(idx).to(self.device) if guards is not None else None  # the guards' labels
            if adversarial:
                with torch.no_grad(), self.policy.autocast():
                    z_det = model.features(x).float()
                if adv.active:
                    for _ in range(config.adv_steps):
                        with self.policy.autocast():
                            a_loss, a_acc, rec = adv.step(z_det, p, px)
                    sums[4:] += (a_loss, a_acc or 0.0, rec or 0.0, 1)
                    adv.requires_grad(False)
                if guards is not None:
                    for _ in range(config.adv_steps):
                        bce, nce = guards.step(z_det, rows, pairs[k])
                    guard_sums += (bce or 0.0, bce is not None, nce or 0.0, nce is not None)
                    guards.requires_grad(False)
            with self.policy.autocast():
                z, logits = joint(x)
                ce = self._task_ce(logits.float(), y, idx)
                priv = torch.zeros((), device=self.device)
                if adversarial and adv.active:
                    priv = priv + adv.privacy_loss(z.float(), p, px, y)
                if guards is not None:
                    priv = priv + guards.privacy_loss(z.float(), rows, y, pairs[k])
            loss = self.task_loss(logits.float(), y, ce, k) + priv
            if teacher is not None:  # keep the warm-started task posterior (distillation on the same noisy input)
                with torch.no_grad():
                    soft = F.softmax(teacher(x).float(), dim=1)
                loss = loss + config.distill_weight * F.kl_div(
                    F.log_softmax(logits.float(), dim=1), soft, reduction="batchmean"
                )
            if adversarial:
                adv.requires_grad(True)
                if guards is not None:
                    guards.requires_grad(True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct = int((logits.argmax(1) == y).sum())
            sums[:4] += (float(ce.item()) * len(idx), float(priv.item()) * len(idx), correct, len(idx))
            bar.set_postfix(acc=f"{sums[2] / sums[3]:.3f}")
        self._recalibrate(rng)
        ce_n, priv_n, correct, n, a_loss, a_acc, rec, adv_n = dist.sum(sums.tolist())
        g_bce, g_bce_n, g_nce, g_nce_n = dist.sum(guard_sums.tolist())
        n, k = max(1.0, n), max(1.0, adv_n)
        weight, leakage = adv.weight, None
        reference_accuracy = self.reference_accuracy()
        if epoch == config.warmup:
            self.warm_accuracy = reference_accuracy
            if adv.active and config.distill_weight > 0:
                self.teacher = _Teacher(model)
        if adversarial and adv.use_attr:
            leakage = self._leakage(adv, epoch)
            if config.leakage_budget is not None:
                adv.weight = self._next_weight(adv.weight, leakage, reference_accuracy)
        return EpochStats(
            epoch=epoch,
            phase="joint",
            task_loss=ce_n / n,
            task_accuracy=correct / n,
            reference_accuracy=reference_accuracy,
            adversary_loss=a_loss / k if adversarial and adv.use_attr else None,
            adversary_accuracy=a_acc / k if adversarial and adv.use_attr else None,
            reconstruction_mse=rec / k if adversarial and adv.use_rec else None,
            privacy_loss=priv_n / n if adversarial else None,
            total_loss=(ce_n + priv_n) / n if adversarial else None,
            adversary_weight=weight if adversarial and adv.use_attr else None,
            reference_leakage=leakage,
            leakage_floor=self.floor if leakage is not None else None,
            attributes_guard_loss=g_bce / g_bce_n if g_bce_n else None,
            identity_guard_loss=g_nce / g_nce_n if g_nce_n else None,
        )

    def _warm_guards(self, guards: Guards, shards: list[np.ndarray], pairs: list[int]) -> None:
        """Warm fresh guards up on the features of the epoch's first batches, computed once (as the adversaries)."""
        first = list(range(min(8, len(shards))))
        with torch.no_grad(), self.policy.autocast():
            feats = [
                self.model.features(_augment(self.feeder.gather(shards[j]), _flips(len(shards[j]), self.hflip))).float()
                for j in first
            ]
        rows = [torch.as_tensor(shards[j]).to(self.device) for j in first]
        for step in range(self.config.adv_warmup_steps):
            j = step % len(first)
            guards.step(feats[j], rows[j], pairs[j])

    @property
    def floor(self) -> float:
        """What the objective aims at, on ``reference``: max(chance, task floor) for the conditional target (the
        attribute guessed from the task label alone, or at random), chance for the uniform one."""
        if self._floor is None:
            ref, k = self.reference, self.prior.shape[1]
            floor = task_floor(self.prior, self.y_all.cpu().numpy()[ref], self.p_all.cpu().numpy()[ref], k)
            conditional = self.config.adversary_target is AdversaryTarget.CONDITIONAL
            self._floor = max(1.0 / k, floor) if conditional else 1.0 / k
        return self._floor

    def _leakage(self, adv: _Adversaries, epoch: int) -> float:
        """What a fresh attacker reads on ``reference`` features (fresh noise): the best of the epoch's adversaries
        and of a linear attacker fitted from scratch on the members' features. Rank 0 reads; the others receive it."""
        reading = self._read_leakage(adv, epoch) if self.dist.is_main else 0.0
        return self.dist.broadcast_value(reading)

    def _read_leakage(self, adv: _Adversaries, epoch: int) -> float:
        model = self.model
        model.eval()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(self.seed + 13)
            z_ref = torch.cat(
                [model.features(self.x_ref[i : i + 512], generator=gen) for i in range(0, len(self.x_ref), 512)]
            ).float()
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            chunks = [self.members[i : i + 512] for i in range(0, len(self.members), 512)]
            z_mem = torch.cat([model.features(self.feeder.gather(c), generator=gen) for c in chunks]).float()
        p_ref = self.p_all[torch.as_tensor(self.reference).to(self.device)]
        p_mem = self.p_all[torch.as_tensor(self.members).to(self.device)]
        model.train()
        k = self.prior.shape[1]
        return max(adv.balanced_accuracy(z_ref, p_ref), linear_attack(z_mem, p_mem, z_ref, p_ref, k))

    def _next_weight(self, weight: float, leakage: float, reference_accuracy: float) -> float:
        config = self.config
        return next_adversary_weight(
            weight,
            base=config.adv_weight,
            leakage=leakage,
            limit=self.floor + (config.leakage_budget or 0.0),
            task_dropped=config.utility_budget is not None
            and self.warm_accuracy is not None
            and reference_accuracy < self.warm_accuracy - config.utility_budget,
        )

    def head_epoch(self, epoch: int, head, opt) -> EpochStats:
        """Encoder frozen: retrain the server layers on fresh channel noise."""
        config, model, dist, feeder = self.config, self.model, self.dist, self.feeder
        rng = _reseed(self.seed, epoch)
        _rank_stream(self.seed, epoch, dist)
        model.head.train()
        sums = np.zeros(3)  # ce*n, correct, n
        batches = _batches(len(self.members), config.batch_size, rng, dist.world)
        flips = [_flips(len(b), self.hflip) for b in batches]
        shards = [dist.shard(self.members[b]) for b in batches]
        total = config.head_finetune_epochs
        bar = progress_bar(range(len(batches)), desc=f"head {epoch - config.epochs}/{total}", enabled=self.progress)
        for k, (idx, x) in zip(bar, feeder.stream(shards)):
            y, _ = self._labels(idx)
            with self.policy.autocast():
                with torch.no_grad():
                    z = model.features(_augment(x, dist.shard(flips[k]) if flips[k] is not None else None))
                logits = head(z)
                loss = self._task_ce(logits.float(), y, idx)
            opt.zero_grad(set_to_none=True)
            self.task_loss(logits.float(), y, loss, k).backward()
            opt.step()
            sums += (float(loss.item()) * len(idx), int((logits.argmax(1) == y).sum()), len(idx))
            bar.set_postfix(acc=f"{sums[1] / sums[2]:.3f}")
        self._recalibrate(rng, part=model.head)
        ce_n, correct, n = dist.sum(sums.tolist())
        n = max(1.0, n)
        return EpochStats(epoch, "head", ce_n / n, correct / n, self.reference_accuracy())
