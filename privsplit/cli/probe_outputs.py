"""Handler of ``privsplit probe outputs RUN``: membership inference and inversion on the returned scores.

Prints the side-by-side summary (without / with the run's purifier, adaptive attacker) to stdout,
always writes ``RUN/probe_outputs.json`` + ``RUN/probe_outputs.npz``, optionally a copy to
``--json FILE`` and figures to ``--plots DIR``.
"""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from privsplit.cli._common import probe_device
    from privsplit.models.purifier import load_purifier
    from privsplit.probes.output_probe import OutputProbeSpec, probe_outputs
    from privsplit.run import RunFolder

    device = probe_device(args)
    folder = RunFolder(args.run).check()
    purifier = load_purifier(folder)  # fail before the expensive part when there is none
    if purifier is None:
        from privsplit.errors import RunError

        raise RunError(f"{folder.path} has no purifier: train one first with `privsplit train-purifier {folder.path}`")
    result = probe_outputs(folder, OutputProbeSpec(seed=args.seed, shadows=args.shadows), device=device)
    print(result.summary())
    written = [result.save(folder.file("probe_outputs.json"))]
    if args.json is not None:
        written.append(result.save(args.json))
    if args.plots is not None:
        from privsplit.report.output_plots import write_output_plots

        written += write_output_plots(result, args.plots)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
