"""``privsplit probe features|outputs RUN``: measure what the features and the returned scores leak."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from privsplit.cli._common import add_json_out, add_probe_device, positive_int, seed_int


def register(sub: argparse._SubParsersAction) -> None:
    probe = sub.add_parser("probe", help="measure leakage with attackers trained after the fact")
    kinds = probe.add_subparsers(dest="probe_kind", metavar="KIND", required=True)

    feats = kinds.add_parser(
        "features",
        help="what the encoder's features leak: attribute inference and reconstruction",
        description="Train fresh attackers on the frozen encoder's features and score them on `holdout`: "
        "attribute inference (logistic regression, MLP, CNN, gradient boosting, each on a learning curve of "
        "25/50/100%% of `attacker` and on members+reference+attacker; the best of all is reported beside chance "
        "and the task floor, with 95%% intervals) and reconstruction (SSIM/PSNR/MSE beside the mean-image "
        "baseline). With --bundle the features are the exported encoder's int8 wire features as the device "
        "sends them (its channel noise included), and the task accuracy is the cloud bundle's.",
    )
    feats.add_argument("run", type=Path, metavar="RUN", help="run folder written by `privsplit train`")
    add_json_out(feats)
    feats.add_argument("--plots", type=Path, metavar="DIR", help="write a reconstruction grid PNG here")
    feats.add_argument(
        "--epochs", type=positive_int, default=None, help="attacker training epochs (default: the probe's own)"
    )
    feats.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="seed of the attackers and of their features' noise "
        "(the task accuracy uses the run's own noise seed, as train and export do)",
    )
    add_probe_device(feats, what="the attackers")
    feats.add_argument(
        "--curve",
        type=_fractions,
        default=None,
        metavar="F,F",
        help="learning curve: fractions of `attacker` each attacker is trained on (default 0.25,0.5,1)",
    )
    feats.add_argument(
        "--no-pool",
        action="store_true",
        help="skip the attackers trained on members+reference+attacker (the largest and slowest training set)",
    )
    feats.add_argument(
        "--no-reconstruction",
        action="store_true",
        help="skip the reconstruction attack (its decoder trains longest: about 25 min at CelebA scale on 2 cores); "
        "for runs that ask only --identity or --attributes",
    )
    feats.add_argument(
        "--null",
        action="store_true",
        help="also train every attacker on features that carry nothing (noise) and report the best: the chance "
        "level of the best-of-all headline on this holdout (doubles the attackers' time)",
    )
    feats.add_argument(
        "--identity",
        action="store_true",
        help="also measure identity linkage (can two requests be tied to one person?): cosine and LDA-metric "
        "attackers fitted on half the people, scored on the other half's non-member images: verification AUC, "
        "TPR at 1%% and 0.1%% FPR, rank-1 identification, each beside its null; writes RUN/probe_linkage[.ENCODER]"
        "[.framesK].json. Needs a dataset with identities (CelebA)",
    )
    feats.add_argument(
        "--attributes",
        metavar="all|A,B",
        default=None,
        help="also measure every other attribute (or the named ones): for each, logistic-regression and MLP "
        "attackers on the attacker part and on the pooled set, read as excess = best - max(chance, its own task "
        "floor, null); writes RUN/probe_attributes[.ENCODER][.framesK].json",
    )
    feats.add_argument(
        "--frames",
        type=_frames,
        default="1",
        metavar="K|inf",
        help="attack the mean of K noisy draws of each image, as an operator averaging a streamed scene would, or "
        "with 'inf' the noise-free features (the limit of averaging); default 1. Results go to "
        "RUN/probe_*[.ENCODER].framesK.json (.noisefree.json)",
    )
    feats.add_argument(
        "--frame-jitter",
        type=float,
        default=0.0,
        metavar="S",
        help="with --frames K: perturb each copy's pixels by N(0, S) grey levels first, as a camera's next frame of a "
        "still scene differs (noise keyed on the exact frame then no longer repeats); default 0 = exact repeats",
    )
    feats.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="probe the exported artefact instead of the torch model: DIR is `privsplit export`'s --out "
        "(DIR/edge and DIR/cloud); writes RUN/probe_features.ENCODER.json",
    )
    feats.add_argument(
        "--encoder",
        default="tflite-int8",
        metavar="FORMAT",
        help="with --bundle: which shipped encoder to probe (default tflite-int8)",
    )
    feats.set_defaults(handler=_lazy("privsplit.cli.probe_features"))

    outs = kinds.add_parser(
        "outputs",
        help="what the returned scores leak: membership inference and model inversion, without/with purifier",
        description="Score the run's members and holdout through the deployed path (encoder, channel noise, server "
        "layers), then attack the returned scores: membership inference (threshold and learned attacks on shadow "
        "models, AUC, advantage and TPR at low FPR beside the label-only floor) and model inversion (a decoder from "
        "scores to images, SSIM beside the mean-image baseline), each without and with the run's purifier. Needs a "
        "run with a purifier (`privsplit train-purifier RUN`).",
    )
    outs.add_argument("run", type=Path, metavar="RUN", help="run folder with a purifier (`privsplit train-purifier`)")
    add_json_out(outs)
    outs.add_argument(
        "--plots", type=Path, metavar="DIR", help="write ROC curves, histograms and an inversion grid here"
    )
    outs.add_argument("--seed", type=seed_int, default=0, help="seed of the attackers")
    add_probe_device(outs, what="the shadow models and the attackers")
    outs.add_argument(
        "--shadows",
        type=positive_int,
        default=1,
        metavar="N",
        help="shadow models of the attacker (default %(default)s; more sharpen the learned attacks and give offline "
        "LiRA a per-record spread from 4, at one training of the run's recipe each)",
    )
    outs.set_defaults(handler=_lazy("privsplit.cli.probe_outputs"))


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions like 0.25,0.5,1, got {text!r}") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], like 0.25,0.5,1; got {text!r}")
    return values


def _lazy(module: str):
    def handler(args: argparse.Namespace) -> int:
        return importlib.import_module(module).run(args)

    return handler


def _frames(text: str):
    from privsplit.errors import ConfigError
    from privsplit.probes.frames import Frames

    try:
        return Frames.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
