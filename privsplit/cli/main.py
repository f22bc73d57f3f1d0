"""The one ``privsplit`` command.

Each area registers its subcommands from its own small module in this package; those modules only
declare arguments, and import their heavy machinery (torch, onnxruntime, grpc) inside the handler, so
``privsplit edge ...`` starts without torch. Library code raises :class:`PrivsplitError`; only this
module turns an error into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from privsplit import __version__
from privsplit.errors import PrivsplitError
from privsplit.quiet import silence_startup_noise

# Modules in privsplit.cli that each define ``register(subparsers)``; order = order in --help.
COMMAND_MODULES = [
    "quickstart",
    "train",
    "purifier",
    "probe",
    "export",
    "keys",
    "serve",
    "devices",
    "bench",
    "edge",
    "flash",
    "split_profile",
    "report",
]


EXIT_CODES = (
    "exit codes: 0 success; 1 other privsplit error; 2 bad option, dataset, or missing/damaged run file "
    "(config.json, split.json, metrics.json, *.safetensors: re-train); 3 missing, damaged, tampered or untrusted "
    "bundle (re-export); 4 optional package not installed; 5 no exported format passed parity; 130 interrupted. "
    "Errors are one line on stderr naming the file or option and the fix."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privsplit",
        description="Privacy-preserving split inference: train, export, flash, serve and measure.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"privsplit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        qualified = f"privsplit.cli.{name}"
        if importlib.util.find_spec(qualified) is None:
            continue
        importlib.import_module(qualified).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    silence_startup_noise()  # before any command imports TensorFlow, LiteRT, torch or torchao
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
    except PrivsplitError as exc:
        print(f"privsplit {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"privsplit {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
