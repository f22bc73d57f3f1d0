"""One exception hierarchy for the whole kit.

Library code raises these; only the CLI turns them into a one-line message and an exit code.
Every message names the problem and, where there is one, the fix.
"""

from __future__ import annotations

from dataclasses import dataclass


class PrivsplitError(Exception):
    """Base class of every error privsplit raises on purpose."""

    exit_code = 1


class DataError(PrivsplitError):
    """A dataset spec, folder, file, attribute or image is missing or malformed."""

    exit_code = 2


class ConfigError(PrivsplitError):
    """An option or combination of options is invalid."""

    exit_code = 2


class RunError(PrivsplitError):
    """A run folder is missing, incomplete or lacks what a command needs."""

    exit_code = 2


class BundleError(PrivsplitError):
    """A bundle is tampered, truncated, unsigned or signed by an untrusted key."""

    exit_code = 3


class ExportError(PrivsplitError):
    """A conversion produced a wrong artefact (I/O dtype or shape), no format passed parity, or the leakage gate
    refused to ship (a measured excess above ``--max-excess``)."""

    exit_code = 5


class MissingDependencyError(PrivsplitError, ImportError):
    """An optional backend is not installed; the message names the pip package to install."""

    exit_code = 4


def require(module: str, *, package: str, extra: str | None = None):
    """Import ``module`` or raise :class:`MissingDependencyError` naming what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised where the package is absent
        hint = f"pip install '{package}'"
        if extra:
            hint += f" (or pip install 'privsplit[{extra}]')"
        raise MissingDependencyError(f"{module} is not installed: {hint}") from exc


class ResultError(RunError):
    """A result file is missing, damaged, or written in another schema version."""


@dataclass(frozen=True)
class ExitCode:
    """One documented exit code of the ``privsplit`` command: the number and what it means to a user."""

    code: int
    meaning: str


# The one table of exit codes: ``privsplit --help`` and the generated CLI reference read it. Every ``exit_code`` set
# on an error class above or elsewhere in the kit appears here (tests/test_structure.py-style checks keep it so).
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "success"),
    ExitCode(1, "another privsplit error"),
    ExitCode(2, "bad option or dataset; run folder or run file missing, incomplete or damaged (re-train)"),
    ExitCode(3, "bundle missing, damaged, tampered, unsigned or signed by an untrusted key (re-export)"),
    ExitCode(4, "an optional package is not installed (the message names the pip package)"),
    ExitCode(5, "no exported format passed parity, or the leakage gate refused it (excess above --max-excess)"),
    ExitCode(6, "the server refused a request (gRPC status named in the message)"),
    ExitCode(7, "the server could not be reached within the retry budget"),
    ExitCode(8, "a flash failed; the device's current release is unchanged"),
    ExitCode(9, "on-device acceptance check failed: int8 features differ from the bundle's reference"),
    ExitCode(75, "training stopped after a checkpoint; run the same command again to resume"),
    ExitCode(130, "interrupted"),
)
