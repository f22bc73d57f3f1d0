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


def probe_bundle_features(
    folder, bundle: Path, spec, *, encoder: str = "tflite-int8", progress: bool = True, device=None
):
    """The probe on an export's ``encoder`` as the device runs it: int8 wire features, device noise included.

    ``bundle`` is ``privsplit export``'s output folder (``bundle/edge``, ``bundle/cloud``). The attackers see
    :meth:`EdgePipeline.encode_pixels` output (noise seeded ``spec.seed + 1``); the task accuracy is the cloud
    bundle's server layers (and purifier) on the holdout's wire features (noise seeded with the run's
    ``eval_noise_seed``). Saves ``RUN/probe_features.ENCODER.json`` and returns the result.
    """
    from privsplit.cloud.model_host import ModelHost
    from privsplit.data import Part
    from privsplit.edge.pipeline import EdgePipeline
    from privsplit.errors import ConfigError
    from privsplit.probes.feature_probe import probe_features

    bundle = Path(bundle)
    edge_dir, cloud_dir = bundle / "edge", bundle / "cloud"
    if not (edge_dir.is_dir() and cloud_dir.is_dir()):
        raise ConfigError(f"{bundle} holds no edge/ and cloud/ bundles: give --bundle the --out of `privsplit export`")
    data, split = folder.dataset(), folder.split()
    probe_pipe = EdgePipeline.open(edge_dir, encoder=encoder, seed=spec.seed + 1)
    task_pipe = EdgePipeline.open(edge_dir, encoder=encoder, seed=folder.eval_noise_seed())
    host = ModelHost.open(cloud_dir, name="probe")
    try:
        size = probe_pipe.preprocessor.spec.size
        if tuple(data.images.shape[1:3]) != (size, size):
            raise ConfigError(f"{bundle} expects {size} px images, the run's data are {data.images.shape[1]} px")
        holdout = data.subset(split[Part.HOLDOUT])
        correct = 0
        for start in range(0, len(holdout), 256):
            wire = task_pipe.encode_pixels(holdout.images[start : start + 256])
            labels = host.infer(wire.dequantize()).labels
            correct += int((labels == holdout.task_labels[start : start + 256]).sum())
        accuracy = correct / len(holdout)
        result = probe_features(
            lambda images: probe_pipe.encode_pixels(images).data,
            data,
            split,
            spec=spec,
            progress=progress,
            device=device,
        )
    finally:
        probe_pipe.close()
        task_pipe.close()
    result = replace(result, features_from=f"{encoder} {bundle}").with_task_accuracy(
        accuracy, noise_sigma=float(probe_pipe.wire.noise_sigma), noise_seed=folder.eval_noise_seed()
    )
    result.save(folder.file(f"probe_features.{encoder}.json"))
    return result


def run(args: argparse.Namespace) -> int:
    from privsplit.cli._common import probe_device
    from privsplit.probes.feature_probe import FeatureProbeSpec, probe_run_features
    from privsplit.run import RunFolder

    device = probe_device(args)
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
    if args.bundle is not None:
        result = probe_bundle_features(folder, args.bundle, spec, encoder=args.encoder, progress=True, device=device)
        written = [folder.file(f"probe_features.{args.encoder}.json")]
    else:
        result = probe_run_features(folder, spec, progress=True, device=device)
        written = [folder.file("probe_features.json")]
    print(result.summary())
    if args.json is not None:
        written.append(result.save(args.json))
    if args.plots is not None:
        from privsplit.report.feature_plots import write_feature_plots

        written += write_feature_plots(result, args.plots)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
