"""Handler of ``privsplit probe features RUN``: the feature-leakage probe on a run's torch model.

Prints the summary table to stdout (progress bars go to stderr), always writes
``RUN/probe_features.json`` (+ ``RUN/probe_features.samples.npz``), and optionally a copy to
``--json FILE`` and figures to ``--plots DIR``.
"""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from privsplit.data import Part
    from privsplit.probes.feature_probe import FeatureProbeSpec, probe_features, torch_encoder_fn, torch_task_accuracy
    from privsplit.run import RunFolder

    folder = RunFolder(args.run).check()
    model = folder.load_split_model()
    data = folder.dataset()
    split = folder.split()
    spec = FeatureProbeSpec(seed=args.seed)
    if args.epochs is not None:
        spec = spec.with_epochs(args.epochs)
    print(
        f"privsplit probe features: {folder.path} ({data.source}, task {data.task}, private {data.private}, "
        f"noise sigma {model.config.noise_sigma:g}); attacker {len(split[Part.ATTACKER])}, holdout {len(split[Part.HOLDOUT])}",
        file=sys.stderr,
        flush=True,
    )
    # The deployed system's accuracy: the full model on holdout with the channel noise on.
    accuracy = torch_task_accuracy(model, data.subset(split[Part.HOLDOUT]), seed=args.seed)
    # A separate noise stream for the probe's features, as a different transmission would draw.
    encode = torch_encoder_fn(model, seed=args.seed + 1)
    result = probe_features(encode, data, split, spec=spec, progress=True).with_task_accuracy(accuracy)

    print(result.summary())
    written = [result.save(folder.path)]
    if args.json is not None:
        written.append(result.save(args.json))
    if args.plots is not None:
        from privsplit.report.feature_plots import write_feature_plots

        written += write_feature_plots(result, args.plots)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
