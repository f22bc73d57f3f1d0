"""``privsplit train``: train a (protected) split model into a run folder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from privsplit.cli._common import DEVICES, non_negative_float, positive_int, seed_int

# privsplit.train.membership_defense.NAMES (a test keeps them equal), without importing torch here
DEFENSES = ("none", "relaxloss", "dp-sgd", "selena", "recommended")
# privsplit.train.config.PrivacyPreset and AdversaryTarget values (a test keeps them equal)
PRESETS = ("balanced", "strong", "off")
TARGETS = ("conditional", "uniform")


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


_PARSER_ACTIONS: list = []


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an encoder + server layers, adversarially protected by default",
        description="Train a split model (Privacy Partitioning). By default the encoder is protected "
        "(--privacy balanced): a 4-channel bottleneck and Gaussian channel noise (--noise); when a private "
        "attribute is given, a warm start on the task, then attribute adversaries aimed at the task floor "
        "with a weight that a leakage budget steers. --privacy strong is the earlier recipe (towards chance); "
        "--unprotected trains the baseline (no adversaries, no noise, 32 feature channels). A protected run "
        "whose task collapses ends with an error (the run is kept; export refuses it). Writes RUN/config.json, "
        "weights (safetensors), RUN/split.json and RUN/metrics.json.",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help="digits | celeba:<dir> | utkface:<dir> | fashion-mnist[:<dir>] | folder:<dir>",
    )
    p.add_argument("--task", metavar="NAME", help="main task label (optional where the dataset has one label)")
    p.add_argument("--private", metavar="NAME", help="private attribute to protect (optional)")
    p.add_argument("--out", required=True, type=Path, metavar="RUN", help="run folder to write")
    p.add_argument("--image-size", type=positive_int, metavar="N", help="resize images to N x N (default per dataset)")
    p.add_argument(
        "--limit", type=positive_int, metavar="N", help="use only the first N images; all splits are drawn from them"
    )
    p.add_argument(
        "--split",
        default="0.4,0.2,0.2,0.2",
        metavar="F,F,F,F",
        help="fractions members,reference,holdout,attacker (default %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="seed of the split, initialisation, batches and noise (default %(default)s)",
    )
    p.add_argument(
        "--unprotected",
        action="store_true",
        help="train the unprotected baseline (adversaries and noise off, 32 feature channels)",
    )
    p.add_argument(
        "--epochs", type=positive_int, help="joint epochs of encoder, server layers and adversaries (default 20)"
    )
    p.add_argument(
        "--head-epochs",
        type=non_negative_int,
        metavar="N",
        help="then N epochs that retrain the server layers alone on the frozen encoder, the best on "
        "reference kept (default 5 protected, 0 with --unprotected)",
    )
    p.add_argument(
        "--adv-weight",
        type=non_negative_float,
        metavar="F",
        help="weight of the attribute adversaries' term; with a leakage budget its start and the pressure that "
        "always holds while the task does (default 1, strong 3; 0 = off)",
    )
    p.add_argument(
        "--rec-weight",
        type=non_negative_float,
        metavar="F",
        help="weight of the reconstruction adversary's term (default 0 = off)",
    )
    p.add_argument(
        "--noise",
        type=non_negative_float,
        metavar="SIGMA",
        help="channel noise sigma, in units of the features' std (default 1.0)",
    )
    p.add_argument(
        "--feature-channels",
        type=positive_int,
        metavar="N",
        help="bottleneck channels (default 4; 32 with --unprotected)",
    )
    p.add_argument(
        "--adversary-loss",
        choices=["entropy", "neg-ce"],
        help="what the encoder does to the adversaries (default entropy)",
    )
    _add_objective_args(p)
    _add_guard_args(p)
    p.add_argument(
        "--arch",
        choices=["small-cnn", "mobilenet-v2"],
        help="architecture (default small-cnn; mobilenet-v2 for 96-224 px)",
    )
    p.add_argument(
        "--split-point", type=positive_int, metavar="K", help="number of blocks on the device (default: architecture's)"
    )
    _add_defense_args(p)
    p.add_argument("--batch-size", type=positive_int, help="batch size (default 128)")
    p.add_argument("--lr", type=non_negative_float, help="learning rate (default 2e-3)")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where to train: auto picks a CUDA or Apple MPS accelerator when present, else the CPU "
        "(default %(default)s)",
    )
    p.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        metavar="N",
        help="train one model in N processes (torchrun + DistributedDataParallel; gloo on CPU, NCCL on "
        "GPUs; default 1)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in --out from its last epoch checkpoint"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch threads for this run (default: torch's choice, one per core). On a busy machine 1 can be much "
        "faster: a CelebA epoch took ~100 s with 1 thread and 6-7 min with 2 beside other jobs on 2 cores",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=run)
    _PARSER_ACTIONS[:] = p._actions


def _add_objective_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("privacy objective (what the features leak about --private)")
    g.add_argument(
        "--privacy",
        choices=PRESETS,
        metavar="PRESET",
        help="balanced (default): aim the adversaries at the task floor, warm start + distillation, pressure only "
        "while they read more than floor + --leakage-budget and the task keeps within --utility-budget | strong: "
        "uniform entropy adversaries at a fixed weight 3, towards chance, whatever the task pays | off: the "
        "unprotected baseline (as --unprotected). The flags below change one part of a preset",
    )
    g.add_argument(
        "--adversary-target",
        choices=TARGETS,
        help="conditional: push the adversaries to the attribute's distribution within each task class "
        "(remove only what it says beyond the task; default) | uniform: towards chance (strong)",
    )
    g.add_argument(
        "--warmup-epochs",
        type=non_negative_int,
        metavar="N",
        help="first N joint epochs train the task alone (noise and bottleneck on, no adversaries; default a "
        "quarter of --epochs, strong 0)",
    )
    g.add_argument(
        "--distill-weight",
        type=non_negative_float,
        metavar="F",
        help="keep the warm start's task posterior during the adversarial epochs (KL weight; default 1, strong 0 "
        "= off)",
    )
    g.add_argument(
        "--leakage-budget",
        type=non_negative_float,
        metavar="BA",
        help="adapt the adversaries' weight each epoch: double it (up to 4x --adv-weight) while fresh attackers "
        "read more than the task floor + BA balanced accuracy on reference, return towards --adv-weight below "
        "(default 0.02; strong: a fixed weight)",
    )
    g.add_argument(
        "--utility-budget",
        type=non_negative_float,
        metavar="ACC",
        help="with --leakage-budget: halve the pressure (down to 1/16 of --adv-weight) while reference accuracy "
        "is more than ACC below the warm start's (default 0.01)",
    )


def _add_guard_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guards (what the features leak that --private does not name)")
    g.add_argument(
        "--attributes-weight",
        type=non_negative_float,
        metavar="W",
        help="attribute guard: adversaries read every --guard-attributes label at once; the encoder pushes each "
        "towards what the task label alone says about it (weight W, 0 = off; default: 3 where a --private "
        "attribute is given and the data has other binary labels, as on CelebA; off elsewhere)",
    )
    g.add_argument(
        "--guard-attributes",
        metavar="all|A,B",
        help="the labels the attribute guard reads (default all binary labels besides --task and --private)",
    )
    g.add_argument(
        "--attributes-balanced",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the attribute guard weighs each attribute's two classes equally, as balanced accuracy does, so a rare "
        "attribute (hats, baldness) counts as much as a common one (default on; --no-attributes-balanced: "
        "unweighted, as the first guards trained)",
    )
    g.add_argument(
        "--identity-weight",
        type=non_negative_float,
        metavar="W",
        help="identity guard: a metric adversary learns to pick the photo of the same person in a batch; the "
        "encoder pushes its choice to uniform (weight W; default 0 = off; needs a dataset with identities)",
    )


def _add_defense_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("membership defence (what the returned scores leak about the training set)")
    g.add_argument(
        "--membership-defense",
        choices=DEFENSES,
        default="none",
        metavar="NAME",
        help="none (default) | relaxloss: keep the training loss near --relax-alpha (gradient ascent below it, "
        "flattened posteriors for the correctly classified) | dp-sgd: differentially private SGD through Opacus "
        "(pip install 'privsplit[dp]'; GroupNorm model, one process, no adversaries/head fine-tune; the epsilon "
        "spent is recorded) | selena: self-distillation, --selena-teachers models each trained without a share of "
        "the members label every member as a non-member; the deployed model learns those labels (costs teachers + 1 "
        "trainings) | recommended: the README's recommendation (recorded as its real name)",
    )
    g.add_argument("--relax-alpha", type=float, metavar="F", help="relaxloss: target cross-entropy (default 1.0)")
    g.add_argument("--dp-epsilon", type=float, metavar="EPS", help="dp-sgd: privacy budget of the run (default 8)")
    g.add_argument("--dp-delta", type=float, metavar="D", help="dp-sgd: delta, below 1/members (default 1e-5)")
    g.add_argument(
        "--dp-max-grad-norm", type=float, metavar="C", help="dp-sgd: per-record gradient clipping bound (default 1.0)"
    )
    g.add_argument("--selena-teachers", type=int, metavar="K", help="selena: number of teachers (default 10)")
    g.add_argument(
        "--selena-held-out",
        type=int,
        metavar="L",
        help="selena: how many teachers never see a given member, 1 .. K-1 (default 1: each teacher skips 1/K)",
    )
    g.add_argument(
        "--selena-label-weight",
        type=float,
        metavar="F",
        help="selena: the true label's share in each member's target, in [0, 1) (default 0.3)",
    )


def build_config(args: argparse.Namespace):
    from privsplit.errors import ConfigError
    from privsplit.train import AdversaryLoss, TrainConfig
    from privsplit.train.config import PrivacyPreset
    from privsplit.train.membership_defense import MembershipDefense

    if args.unprotected and args.privacy not in (None, "off"):
        raise ConfigError(f"--unprotected is --privacy off: drop one of --unprotected and --privacy {args.privacy}")
    config = TrainConfig.preset(PrivacyPreset.OFF if args.unprotected else PrivacyPreset(args.privacy or "balanced"))
    changes = {
        "adversary_target": args.adversary_target,
        "warmup_epochs": args.warmup_epochs,
        "distill_weight": args.distill_weight,
        "leakage_budget": args.leakage_budget,
        "utility_budget": args.utility_budget,
        "attributes_weight": args.attributes_weight,
        "guard_attributes": args.guard_attributes,
        "attributes_balanced": args.attributes_balanced,
        "identity_weight": args.identity_weight,
        "epochs": args.epochs,
        "head_finetune_epochs": args.head_epochs,
        "adv_weight": args.adv_weight,
        "rec_weight": args.rec_weight,
        "noise_sigma": args.noise,
        "feature_channels": args.feature_channels,
        "adversary_loss": AdversaryLoss(args.adversary_loss) if args.adversary_loss else None,
        "arch": args.arch,
        "split": args.split_point,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "membership_defense": MembershipDefense.parse(
            args.membership_defense,
            relax_alpha=args.relax_alpha,
            dp_epsilon=args.dp_epsilon,
            dp_delta=args.dp_delta,
            dp_max_grad_norm=args.dp_max_grad_norm,
            selena_teachers=args.selena_teachers,
            selena_held_out=args.selena_held_out,
            selena_label_weight=args.selena_label_weight,
        ),
    }
    return config.with_(**{k: v for k, v in changes.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from privsplit.data import SplitFractions
    from privsplit.train import train_run
    from privsplit.train.distributed import under_torchrun

    if args.quiet:
        os.environ["PRIVSPLIT_PROGRESS"] = "0"  # the loaders' image-decoding bars too
    config = build_config(args)
    fractions = SplitFractions.parse(args.split)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.nproc > 1 and config.membership_defense.is_dp:
        from privsplit.errors import ConfigError

        raise ConfigError("--membership-defense dp-sgd trains in one process: drop --nproc")
    if args.nproc > 1 and not under_torchrun():
        return _launch(args)
    run_folder = train_run(
        args.data,
        args.out,
        task=args.task,
        private=args.private,
        image_size=args.image_size,
        limit=args.limit,
        seed=args.seed,
        fractions=fractions,
        config=config,
        progress=not args.quiet,
        device=args.device,
        resume=args.resume,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports
    metrics = run_folder.read_json("metrics.json")
    print(
        json.dumps({"run": str(run_folder.path), "task": metrics["task"], "selected_epoch": metrics["selected_epoch"]})
    )
    return 0


def _launch(args: argparse.Namespace) -> int:
    """Re-run this very command in ``--nproc`` processes under torchrun (validated here first)."""
    from privsplit.train.device import resolve_device
    from privsplit.train.distributed import launch

    device = resolve_device(args.device)
    if device.type == "cuda":
        import torch

        if args.nproc > torch.cuda.device_count():
            from privsplit.errors import ConfigError

            count = torch.cuda.device_count()
            raise ConfigError(f"--nproc {args.nproc} on CUDA needs {args.nproc} GPUs; this machine has {count}")
    argv = ["train"]
    for action in _PARSER_ACTIONS:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("nproc", "help") or value is None or value is False:
            continue
        flag = action.option_strings[-1]
        argv += [flag] if value is True else [flag, str(value)]
    return launch(args.nproc, argv)
