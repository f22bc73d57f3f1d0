"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse
from pathlib import Path

# Counts, sizes and seeds above these are refused at parse time (they overflow C ints or numpy seeds downstream).
MAX_INT = 2**31 - 1
MAX_SEED = 2**32 - 1


def _int(text: str, *, low: int, high: int = MAX_INT) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= {low}" if low != 1 else f"{text!r} must be > 0")
    if value > high:
        raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {high})")
    return value


def positive_int(text: str) -> int:
    """An integer in 1..2**31-1."""
    return _int(text, low=1)


def non_negative_int(text: str) -> int:
    """An integer in 0..2**31-1 (zero means zero)."""
    return _int(text, low=0)


def seed_int(text: str) -> int:
    """A seed in 0..2**32-1 (what numpy and torch accept)."""
    return _int(text, low=0, high=MAX_SEED)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (zero means zero)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0: for durations and deadlines, where 0 would mean "nothing" (refused, not "default")."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def add_json_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON to FILE")


def add_dial_args(parser: argparse.ArgumentParser) -> None:
    """The client's token and TLS flags (``privsplit edge ...`` and ``privsplit cloud bench``)."""
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="F",
        help="file holding the bearer token (sent as 'authorization: Bearer <token>')",
    )
    parser.add_argument("--tls-ca", type=Path, metavar="F", help="CA (PEM) that verifies the server: turns TLS on")
    parser.add_argument("--tls-cert", type=Path, metavar="F", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", type=Path, metavar="F", help="client private key (PEM) for mutual TLS")
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="name to check the server certificate against (default: the host)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow --token-file over plaintext to a non-loopback server (refused by default: use --tls-ca)",
    )


def dial_token(args: argparse.Namespace) -> str | None:
    """Check the flags of :func:`add_dial_args` go together; the token read from ``--token-file``, if any."""
    from privsplit.errors import ConfigError
    from privsplit.proto.channel import read_token

    if args.tls_ca is None and (args.tls_cert is not None or args.tls_key is not None):
        raise ConfigError("--tls-cert/--tls-key (mutual TLS) need --tls-ca")
    return None if args.token_file is None else read_token(args.token_file)


DEVICES = ("auto", "cpu", "cuda", "mps")  # privsplit.train.device.DeviceKind, without importing torch here


def add_probe_device(parser: argparse.ArgumentParser, *, what: str) -> None:
    """``--device`` of the probes and the purifier: the choices of ``privsplit train``, the CPU by default."""
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help=f"where {what} train: auto picks a CUDA or Apple MPS accelerator when present, else the CPU "
        "(default %(default)s: the CPU gives the reference figures; other devices agree within noise)",
    )


def probe_device(args: argparse.Namespace):
    """The ``torch.device`` of ``--device`` (an accelerator that is not there: a one-line ConfigError)."""
    from privsplit.train.device import resolve_device

    return resolve_device(args.device)
