"""Handler of ``privsplit probe features RUN``: the feature-leakage probe on a run's torch model.

Prints the summary table to stdout (progress bars go to stderr), always writes
``RUN/probe_features.json`` (+ ``RUN/probe_features.samples.npz``), and optionally a copy to
``--json FILE`` and figures to ``--plots DIR``.
"""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from privsplit.cli._common import probe_device
    from privsplit.probes.feature_probe import FeatureProbeSpec, probe_run_features
    from privsplit.run import RunFolder

    device = probe_device(args)
    folder = RunFolder(args.run).check()
    spec = FeatureProbeSpec(seed=args.seed)
    if args.epochs is not None:
        spec = spec.with_epochs(args.epochs)
    result = probe_run_features(folder, spec, progress=True, device=device)
    print(result.summary())
    written = [folder.file("probe_features.json")]
    if args.json is not None:
        written.append(result.save(args.json))
    if args.plots is not None:
        from privsplit.report.feature_plots import write_feature_plots

        written += write_feature_plots(result, args.plots)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
