"""Handler of ``privsplit probe features RUN``: the feature-leakage probe on a run's torch model or export.

Prints the summary table to stdout (progress bars go to stderr), always writes
``RUN/probe_features.json`` (+ ``RUN/probe_features.samples.npz``) for the torch model, or
``RUN/probe_features.ENCODER.json`` with ``--bundle``, and optionally a copy to ``--json FILE`` and
figures to ``--plots DIR``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def _with_encoder(folder, args, seed: int, measure):
    """``measure(encode)`` on the run's torch model or, with --bundle, the shipped encoder as the device runs it;
    returns its result and the source it names (``torch`` or ``FORMAT BUNDLE``)."""
    if args.bundle is not None:
        from privsplit.edge.pipeline import EdgePipeline
        from privsplit.noise_keying import stand_in_key

        noise = not args.frames.noise_free
        pipe = EdgePipeline.open(
            Path(args.bundle) / "edge", encoder=args.encoder, seed=seed, noise=noise, noise_key=stand_in_key(seed)
        )
        try:
            return measure(lambda images: pipe.encode_pixels(images).data), f"{args.encoder} {args.bundle}"
        finally:
            pipe.close()
    from privsplit.probes.feature_probe import torch_encoder_fn

    return measure(torch_encoder_fn(folder.load_split_model(), seed=seed, noise=not args.frames.noise_free)), "torch"


def _result_name(stem: str, args) -> str:
    encoder = "" if args.bundle is None else f".{args.encoder}"
    return f"{stem}{encoder}{args.frames.tag}.json"


def probe_identity_linkage(folder, data, args, spec):
    """``--identity``: the linkage probe on the same kind of features the attribute attackers saw."""
    from privsplit.probes.linkage import LinkageSpec, probe_encoder_linkage

    split = folder.split()
    result, source = _with_encoder(
        folder,
        args,
        spec.seed + 2,
        lambda encode: probe_encoder_linkage(encode, data, split, LinkageSpec(seed=spec.seed), frames=args.frames),
    )
    result = replace(result, features_from=source)
    return result, result.save(folder.file(_result_name("probe_linkage", args)))


def probe_other_attributes(folder, data, args, spec, *, device=None):
    """``--attributes``: every other (or each named) attribute's excess over chance, its task floor and null."""
    from privsplit.probes.attribute_sweep import probe_attribute_sweep, resolve_attributes, sweep_spec

    split = folder.split()
    names = resolve_attributes(data, args.attributes)
    sweep = sweep_spec(seed=spec.seed, epochs=args.epochs)
    result, source = _with_encoder(
        folder,
        args,
        spec.seed + 3,
        lambda encode: probe_attribute_sweep(encode, data, split, names, spec=sweep, frames=args.frames, device=device),
    )
    result = replace(result, features_from=source)
    return result, result.save(folder.file(_result_name("probe_attributes", args)))


def run(args: argparse.Namespace) -> int:
    from privsplit.cli._common import probe_device
    from privsplit.errors import ConfigError
    from privsplit.probes.feature_probe import FeatureProbeSpec, probe_run_features
    from privsplit.run import RunFolder

    device = probe_device(args)
    if args.frame_jitter:
        args.frames = replace(args.frames, jitter=args.frame_jitter)  # checked by Frames: one line if out of range
    folder = RunFolder(args.run).check()
    spec = FeatureProbeSpec(seed=args.seed)
    if args.epochs is not None:
        spec = spec.with_epochs(args.epochs)
    if args.curve is not None:
        spec = replace(spec, curve=args.curve)
    if args.no_pool:
        spec = replace(spec, pooled=False)
    if args.null:
        spec = replace(spec, null=True)
    if args.no_reconstruction:
        spec = replace(spec, reconstruction=False)
    # the dataset is loaded once for the extra probes (a bad name or a missing label fails before any attacker trains)
    extra = folder.dataset() if args.identity or args.attributes is not None else None
    if args.identity and "identity" not in extra.labels:
        raise ConfigError(
            f"--identity needs identities and {folder.path}'s dataset has none (CelebA with identity_CelebA.txt has)"
            "; drop --identity"
        )
    if args.attributes is not None:
        from privsplit.probes.attribute_sweep import resolve_attributes

        resolve_attributes(extra, args.attributes)
    tag = args.frames.tag
    if args.bundle is not None:
        from privsplit.quickstart.bundle_probe import probe_bundle_features

        result = probe_bundle_features(
            folder, args.bundle, spec, encoder=args.encoder, progress=True, device=device, frames=args.frames
        )
        written = [folder.file(f"probe_features.{args.encoder}{tag}.json")]
    else:
        result = probe_run_features(folder, spec, progress=True, device=device, frames=args.frames)
        written = [folder.file(f"probe_features{tag}.json")]
    print(result.summary())
    linkage = sweep = None
    if args.identity:
        linkage, path = probe_identity_linkage(folder, extra, args, spec)
        print(linkage.summary())
        written.append(path)
    if args.attributes is not None:
        sweep, path = probe_other_attributes(folder, extra, args, spec, device=device)
        print(sweep.summary())
        written.append(path)
    if args.json is not None:
        written.append(result.save(args.json))
    if args.plots is not None:
        from privsplit.report.feature_plots import write_feature_plots

        written += write_feature_plots(result, args.plots)
        from privsplit.report.unforeseen_plots import plot_attribute_excess, plot_linkage_roc

        tag = args.frames.tag
        if linkage is not None:
            written.append(
                plot_linkage_roc({linkage.features_from: linkage}, Path(args.plots) / f"linkage_roc{tag}.png")
            )
        if sweep is not None:
            written.append(
                plot_attribute_excess({sweep.features_from: sweep}, Path(args.plots) / f"attribute_excess{tag}.png")
            )
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
