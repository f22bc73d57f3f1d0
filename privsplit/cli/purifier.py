"""``privsplit train-purifier RUN``: train the purifier on the run's ``reference`` outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from privsplit.cli._common import add_probe_device, non_negative_float, positive_int, probe_device, seed_int

# privsplit.train.purifier_modes.PurifierMode (a test keeps them equal), without importing torch here: the CLI
# parser is built by torch-free installs too (edge, cloud, KServe)
MODES = ("ae", "adversarial", "swap")


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 0.5], got {text!r}") from None
    if not 0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 0.5] (e.g. 0.05), got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-purifier",
        help="train the purifier that reshapes the returned scores (Prediction Purification)",
        description="Train a purifier on the target's outputs on the run's `reference` part (never on "
        "`members`) and save it as RUN/purifier.json + RUN/purifier.safetensors. Vectors whose runner-up "
        "lies under the clamp collapse to one-hot on their label. The clamp is calibrated on reference "
        "outputs: by default privacy first (the least distortion whose bound on the AUC above the label "
        "floor is at most --max-excess), or the most privacy within --max-distortion percent L1. The "
        "label is always preserved. "
        "Mode `ae` fits the autoencoder correction to the original scores (L2 + label CE); "
        "`adversarial` also trains it against a membership discriminator (on a defender shadow model "
        "trained on half of `reference`) and an inversion decoder. "
        "`swap` (the only mode that changes labels, the only one below the label floor) is `ae` plus a label "
        "swapper: at most --swap-share of non-members (calibrated on `reference`) and the share of members that "
        "closes the members/non-members accuracy gap get their runner-up's label; it prints the label agreement "
        "and accuracy cost on holdout and on members. Check it with `privsplit probe outputs RUN`.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder written by `privsplit train`")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="ae",
        help="training objective (default %(default)s; `swap` changes a few labels)",
    )
    p.add_argument(
        "--swap-share",
        type=_share,
        default=None,
        metavar="F",
        help="swap mode: at most this share of non-members changes label, in (0, 0.5] (default 0.05)",
    )
    p.add_argument("--epochs", type=positive_int, default=300, help="purifier training epochs (default %(default)s)")
    p.add_argument(
        "--max-excess",
        type=non_negative_float,
        default=None,
        metavar="F",
        help="bound on the membership AUC above the label floor, estimated on reference outputs (default 0.02)",
    )
    p.add_argument(
        "--max-distortion",
        type=non_negative_float,
        default=None,
        metavar="PCT",
        help="calibrate to an L1 distortion budget in percent on reference outputs instead",
    )
    p.add_argument(
        "--log-clamp",
        type=non_negative_float,
        default=None,
        metavar="C",
        help="fix the clamp instead of calibrating it (vectors whose runner-up is below exp(-C) x top collapse)",
    )
    p.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="seed of the purifier, its adversaries and the noise (default %(default)s)",
    )
    add_probe_device(p, what="the purifier (and, with --mode adversarial, the defender's shadow model)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from privsplit.errors import ConfigError
    from privsplit.models.purifier import purifier_training_facts
    from privsplit.run import RunFolder
    from privsplit.train.purifier import PurifierTrainConfig, train_purifier
    from privsplit.train.purifier_modes import PurifierMode

    changes = {
        "max_distortion_pct": args.max_distortion,
        "log_clamp": args.log_clamp,
        "max_excess_auc": args.max_excess,
    }
    if args.log_clamp is not None and args.log_clamp <= 0:
        raise ConfigError("--log-clamp must be > 0")
    device = probe_device(args)
    if args.swap_share is not None and args.mode != "swap":
        raise ConfigError("--swap-share applies to --mode swap only")
    if args.swap_share is not None:
        changes["swap_share"] = args.swap_share
    config = PurifierTrainConfig(
        mode=PurifierMode(args.mode),
        epochs=args.epochs,
        seed=args.seed,
        **{k: v for k, v in changes.items() if v is not None},
    )
    folder = RunFolder(args.run).check()
    train_purifier(folder, config, progress=not args.quiet, device=device)
    facts = purifier_training_facts(folder)
    print(
        f"purifier ({args.mode}) saved to {folder.file('purifier.json')}: clamp {facts['log_clamp']:.3f}, "
        f"reference distortion {facts['reference_distortion_pct']:.2f}% L1, label agreement "
        f"{facts['reference_label_agreement']:.4f} on {facts['reference_records']} reference records",
        file=sys.stderr if args.quiet else sys.stdout,
    )
    for part in ("holdout", "members"):
        cost = facts.get(f"cost_{part}")
        if cost:
            print(
                f"  on {part} ({cost['records']} records): label agreement {cost['label_agreement']:.4f}, accuracy "
                f"{cost['accuracy']:.4f} -> {cost['accuracy_purified']:.4f} ({cost['accuracy_cost_points']:+.2f} pt)",
                file=sys.stderr if args.quiet else sys.stdout,
            )
    return 0
