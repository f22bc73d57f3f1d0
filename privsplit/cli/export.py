"""``privsplit export RUN --out DIR``: quantized TFLite/ONNX encoders, parity report, signed bundles."""

from __future__ import annotations

import argparse
from pathlib import Path

from privsplit.cli._common import non_negative_float, positive_int, seed_int
from privsplit.leakage_gate import DEFAULT_MAX_EXCESS, parse_max_excess

_FORMATS = "tflite-fp32,tflite-fp16,tflite-dynamic,tflite-int8,onnx-fp32,onnx-int8"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="convert the encoder to TFLite/ONNX, prove parity, write signed edge and cloud bundles",
        description="Export a run: encoder artefacts per format (TFLite float32/float16/dynamic-range/full "
        "int8 with int8 I/O, ONNX float32/static int8), each checked for I/O dtypes and measured against "
        "PyTorch on holdout images (feature error, end-to-end task accuracy through the int8 wire and "
        "server.onnx, feature-leakage probe on its wire features). Formats whose accuracy drops more "
        "than --tolerance are reported and not shipped. Writes DIR/edge, DIR/cloud (manifest.json with "
        "sha256 of every file, manifest.sig with --sign-key), DIR/parity.json and, with --triton, DIR/triton.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder written by `privsplit train`")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument(
        "--formats", default=_FORMATS, metavar="F,F", help="comma-separated formats or 'all' (default: all six)"
    )
    p.add_argument(
        "--calibration",
        type=positive_int,
        default=256,
        metavar="N",
        help="reference images to calibrate int8 on (default %(default)s)",
    )
    p.add_argument(
        "--sign-key", type=Path, metavar="KEY", help="Ed25519 private key (PREFIX.key from `privsplit keys generate`)"
    )
    p.add_argument(
        "--release",
        type=int,
        metavar="N",
        help="anti-rollback number in both manifests; devices refuse a release older than their newest "
        "(default: the Unix time of the export, so each export is newer than the last)",
    )
    p.add_argument(
        "--endorsement",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="key endorsement from `privsplit keys endorse` (repeatable, oldest first): devices rooted in the "
        "endorsing key accept this bundle signed by --sign-key and rotate to it",
    )
    p.add_argument(
        "--tolerance",
        type=non_negative_float,
        default=0.01,
        metavar="F",
        help="largest holdout task-accuracy drop vs PyTorch "
        "a shipped format may have, as a fraction (default %(default)s = 1 point)",
    )
    p.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="seed of calibration sampling, the holdout subset and probe attackers "
        "(default %(default)s); the holdout's channel noise is the run's own, as in train and probe",
    )
    p.add_argument(
        "--holdout-limit",
        type=positive_int,
        metavar="N",
        help="measure parity on at most N holdout images (default all)",
    )
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="skip the feature-leakage probe (attribute / reconstruction columns stay empty)",
    )
    p.add_argument(
        "--probe-formats", metavar="F,F", help="run the leakage probe only on these formats (default: all exported)"
    )
    p.add_argument(
        "--probe-epochs",
        type=positive_int,
        metavar="N",
        help="training budget of the probe's attackers (default: the probe's own)",
    )
    p.add_argument(
        "--max-excess",
        type=parse_max_excess,
        default=argparse.SUPPRESS,
        metavar="E",
        help="leakage gate: refuse to ship (exit 5) when, on the shipped artefacts' int8 wire features, the best "
        "attacker reads more than E above max(chance, task floor, null) on the private attribute, identity "
        "linkage (verification AUC over max(0.5, null)) or any other attribute, on one frame or the mean of 16; "
        f"'off' turns it off (default {DEFAULT_MAX_EXCESS:g}; the record goes to parity.json and both manifests, "
        "and `privsplit verify` prints it)",
    )
    p.add_argument(
        "--version", dest="bundle_version", metavar="STR", help="bundle version string (default RUNNAME-<content hash>)"
    )
    p.add_argument(
        "--triton",
        action="store_true",
        help="also write DIR/triton, a Triton model repository of the cloud bundle (int8 server model with "
        "dynamic batching, purifier, and an ensemble with the I/O of `privsplit serve`; needs tritonclient)",
    )
    p.add_argument(
        "--triton-model-name",
        metavar="NAME",
        help="with --triton: the ensemble's name, the model devices ask for (default privsplit, as `privsplit serve`)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing export in DIR; also ship a run whose protected training collapsed",
    )
    p.add_argument(
        "--noise-keying",
        choices=("fresh", "frame"),
        default="frame",
        help="how devices seed the channel noise: frame = keyed on a device secret and the exact frame, so an exact "
        "repeat gets the same noise and averaging repeats gains nothing (the secret is DEVICE/trust/noise.key, made "
        "on first use; off a device $PRIVSPLIT_NOISE_KEY or ~/.config/privsplit/noise.key); fresh = a new draw per "
        "request, which averages away over repeated frames; default %(default)s",
    )
    p.add_argument("--strict", action="store_true", help="exit non-zero when any requested format failed parity")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from privsplit.errors import ConfigError
    from privsplit.export.formats import parse_formats
    from privsplit.export.pipeline import export_run
    from privsplit.noise_keying import NoiseKeying
    from privsplit.proto.wire import DEFAULT_MODEL_NAME

    if args.triton_model_name is not None and not args.triton:
        raise ConfigError("--triton-model-name names the Triton ensemble: pass --triton too")

    max_excess = getattr(args, "max_excess", DEFAULT_MAX_EXCESS)
    if args.no_probe and hasattr(args, "max_excess") and max_excess is not None:
        raise ConfigError(
            "--max-excess gates on the feature probe's measurements and --no-probe skips them: drop --no-probe, "
            "or pass --max-excess off"
        )
    probe_spec = None
    if not args.no_probe:
        from privsplit.probes.feature_spec import FeatureProbeSpec

        # one training set per format (a parity check across formats); the full learning curve on the shipped
        # artefact is `privsplit probe features RUN --bundle OUT`
        probe_spec = FeatureProbeSpec(seed=args.seed, curve=(1.0,), pooled=False)
        if args.probe_epochs:
            probe_spec = probe_spec.with_epochs(args.probe_epochs)
    result = export_run(
        args.run,
        args.out,
        formats=parse_formats(args.formats),
        calibration=args.calibration,
        sign_key=args.sign_key,
        tolerance=args.tolerance,
        seed=args.seed,
        probe_spec=probe_spec,
        probe_formats=parse_formats(args.probe_formats) if args.probe_formats else None,
        holdout_limit=args.holdout_limit,
        version=args.bundle_version,
        overwrite=args.force,
        ship_collapsed=args.force,
        progress=not args.quiet,
        triton=args.triton,
        triton_model_name=args.triton_model_name or DEFAULT_MODEL_NAME,
        release=args.release,
        endorsements=tuple(args.endorsement),
        max_excess=max_excess if not args.no_probe else None,
        noise_keying=NoiseKeying.parse(args.noise_keying),
    )
    print(result.parity.summary())
    print(f"edge bundle  {result.edge.root} ({', '.join(result.shipped)}; default {result.default_encoder})")
    print(f"cloud bundle {result.cloud.root}" + ("" if result.cloud.manifest["purifier"] else " (no purifier)"))
    if result.triton is not None:
        print(f"triton       {result.triton.root} (ensemble {result.triton.ensemble!r})")
    print(f"parity       {result.parity_path}")
    failed = [r.format for r in result.parity.formats if not r.passed]
    return 1 if (args.strict and failed) else 0
