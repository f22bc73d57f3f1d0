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
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from privsplit import __version__
from privsplit.errors import EXIT_CODES, PrivsplitError
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


# Set to 1 to get the full traceback of an unexpected error (a bug: please report it with the traceback).
TRACEBACK_ENV = "PRIVSPLIT_TRACEBACK"

# Options that name a file or folder the command writes: checked before any work starts (see _check_outputs).
OUTPUT_DESTS = ("json", "plots", "out")


def exit_codes_epilog() -> str:
    """The ``--help`` epilog: every code of :data:`privsplit.errors.EXIT_CODES`, one per line."""
    rows = "\n".join(f"  {c.code:>3}  {c.meaning}" for c in EXIT_CODES)
    return (
        f"exit codes:\n{rows}\n\nErrors are one line on stderr naming the file or option and the fix "
        f"(set {TRACEBACK_ENV}=1 to see the traceback of an unexpected error)."
    )


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit code 2), naming the --help to read."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        self.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="privsplit",
        description="Privacy-preserving split inference: train, export, flash, serve and measure.",
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"privsplit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        qualified = f"privsplit.cli.{name}"
        if importlib.util.find_spec(qualified) is None:
            continue
        importlib.import_module(qualified).register(sub)
    return parser


def _command(args: argparse.Namespace) -> str:
    """The subcommand as typed, e.g. ``edge bench`` (for the error line)."""
    words = [args.command] + [
        str(v) for k, v in sorted(vars(args).items()) if k.endswith(("_command", "_kind")) and k != "command" and v
    ]
    return " ".join(w for w in words if w)


def _deprecation_note(args: argparse.Namespace) -> str:
    """The note an old spelling (an alias kept for one release) prints; empty for the current names. Said once: at
    the end of a run, or inside the one error line."""
    from privsplit.cli.bench import DEPRECATED

    old = getattr(args, "deprecated_spelling", None)
    if not old:
        return ""
    return f"note: `privsplit {old}` is deprecated and goes in the next release: use `privsplit {DEPRECATED[old]}`"


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written before any work starts (nothing is written half-way)."""
    from privsplit.errors import ConfigError

    for dest in OUTPUT_DESTS:
        value = getattr(args, dest, None)
        if not isinstance(value, Path):
            continue
        flag = "--" + dest.replace("_", "-")
        path = value
        while not path.exists() and path != path.parent:
            path = path.parent
        if path == value:
            continue  # exists: the command decides (overwrite, --force, resume)
        if not path.is_dir():
            raise ConfigError(
                f"{flag} {value}: {path} is not a folder, so {value} cannot be created: choose another path"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {value}: folder {path} is not writable: choose another path")


def _os_error_line(exc: OSError) -> str:
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{what[0].lower() + what[1:]}: check the path and its permissions"


def main(argv: Sequence[str] | None = None) -> int:
    silence_startup_noise()  # before any command imports TensorFlow, LiteRT, torch or torchao
    parser = build_parser()
    args = parser.parse_args(argv)  # --help, --version and a usage error (one line) exit here, as argparse does
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    name = _command(args)
    note = _deprecation_note(args)
    try:
        _check_outputs(args)
        result = args.handler(args)
    except PrivsplitError as exc:
        print(f"privsplit {name}: error: {exc}{note and f' ({note})'}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"privsplit {name}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a path the user gave that cannot be read or written, a full disk, ...
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"privsplit {name}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get(TRACEBACK_ENV):
            raise
        line = " ".join(textwrap.shorten(str(exc), 300).split()) or "(no message)"
        print(
            f"privsplit {name}: internal error: {type(exc).__name__}: {line} "
            f"(a bug: please report it with the output of {TRACEBACK_ENV}=1 privsplit ...)",
            file=sys.stderr,
        )
        return 1
    if note:
        print(f"privsplit {name}: {note}", file=sys.stderr)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
