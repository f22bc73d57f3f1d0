"""One exception hierarchy for the whole kit.

Library code raises these; only the CLI turns them into a one-line message and an exit code.
Every message names the problem and, where there is one, the fix.
"""

from __future__ import annotations


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
    """A conversion produced a wrong artefact (I/O dtype or shape) or no format passed parity."""

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
