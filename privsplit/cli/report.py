"""``privsplit report RUN_OR_DIR``: rebuild report.html / report.md / summary.json from saved results."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild report.html, report.md and summary.json from a quickstart folder or a run folder",
        description="Read the results a quickstart (or `privsplit train` + the probes) saved "
        "and write DIR/summary.json, "
        "DIR/report.md, DIR/report.html (self-contained, figures embedded) and DIR/plots/. "
        "Nothing is retrained or remeasured.",
    )
    p.add_argument(
        "folder",
        type=Path,
        metavar="RUN_OR_DIR",
        help="quickstart folder (quickstart.json) or run folder (config.json)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from privsplit.errors import RunError
    from privsplit.report.build import build_report

    if not args.folder.is_dir():
        raise RunError(f"{args.folder} is not a folder: give a quickstart folder or a run folder")
    paths = build_report(args.folder)
    print(f"wrote {paths.html}, {paths.markdown}, {paths.summary} and {len(paths.figures)} figures")
    return 0
