"""``privsplit devices add|revoke|list``: per-device bearer tokens for ``privsplit serve --device-tokens``.

The tokens file holds ``DEVICE-ID SHA256-HEX`` lines only (no secrets); ``add`` prints the new token once
(or writes it, mode 0600, to ``--out``), ``revoke`` removes the device's line. Every change replaces the
file atomically, so a running server never reads half a file; it picks the change up within about 1 s.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

TOKEN_BYTES = 32


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "devices",
        help="issue and revoke per-device tokens for `privsplit serve --device-tokens`",
        description="Manage the per-device tokens file of `privsplit serve --device-tokens FILE`: one line per "
        "device, 'DEVICE-ID SHA256-OF-TOKEN', so the file holds no secret. A running server re-reads it: a revoked "
        "device is refused within about 1 s without a restart.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser(
        "add",
        help="issue a token to a new device (printed once)",
        description="Add a device to the tokens file (created if missing) and print its new token once on stdout "
        "(or write it to --out, mode 0600). The device sends it with `--token-file`.",
    )
    add.add_argument("--id", required=True, metavar="ID", help="device id (letters, digits, . _ : @ -)")
    add.add_argument("--tokens", required=True, type=Path, metavar="FILE", help="the tokens file")
    add.add_argument("--out", type=Path, metavar="F", help="write the token to F (mode 0600) instead of stdout")
    add.set_defaults(handler=run_add)
    revoke = verbs.add_parser(
        "revoke",
        help="revoke a device (its line is removed; a running server refuses it within about 1 s)",
        description="Remove a device from the tokens file. A server running with --device-tokens FILE refuses "
        "its calls, and the next message of a stream it holds open, within about 1 s.",
    )
    revoke.add_argument("--id", required=True, metavar="ID", help="device id to revoke")
    revoke.add_argument("--tokens", required=True, type=Path, metavar="FILE", help="the tokens file")
    revoke.set_defaults(handler=run_revoke)
    show = verbs.add_parser("list", help="list the devices of a tokens file", description="Print one device id a line.")
    show.add_argument("--tokens", required=True, type=Path, metavar="FILE", help="the tokens file")
    show.set_defaults(handler=run_list)


def _lines(path: Path) -> list[str]:
    from privsplit.cloud.devices import read_tokens

    if not path.exists():
        return []
    read_tokens(path)  # refuse to edit a file the server would refuse (the error names the line)
    return path.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> None:
    from privsplit.errors import ConfigError

    text = "".join(f"{line}\n" for line in lines)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644 if not path.exists() else path.stat().st_mode & 0o777)
        os.replace(tmp, path)  # atomic: a running server reads the old file or the new one
    except OSError as exc:
        raise ConfigError(f"--tokens {path}: cannot write it ({exc.strerror})") from None


def _device_of(line: str) -> str | None:
    parts = line.split("#", 1)[0].split()
    return parts[0] if parts else None


def run_add(args: argparse.Namespace) -> int:
    from privsplit.cloud.devices import check_device_id, token_digest
    from privsplit.errors import ConfigError

    device = check_device_id(args.id)
    lines = _lines(args.tokens)
    if any(_device_of(line) == device for line in lines):
        raise ConfigError(
            f"device {device!r} is already in {args.tokens}; revoke it first (`privsplit devices revoke --id "
            f"{device} --tokens {args.tokens}`) to issue a new token"
        )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    if args.out is not None:
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"--out {args.out} exists; pick a new file (a token is shown only once)") from None
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: cannot create it ({exc.strerror})") from None
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    _write(args.tokens, [*lines, f"{device} {token_digest(token)}"])
    if args.out is None:
        print(token)
        print(f"device {device!r} added to {args.tokens}; the token above is shown once", file=sys.stderr)
    else:
        print(f"device {device!r} added to {args.tokens}; its token is in {args.out} (mode 0600)", file=sys.stderr)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from privsplit.errors import ConfigError

    lines = _lines(args.tokens)
    kept = [line for line in lines if _device_of(line) != args.id]
    if len(kept) == len(lines):
        raise ConfigError(f"device {args.id!r} is not in {args.tokens} (`privsplit devices list --tokens FILE`)")
    _write(args.tokens, kept)
    print(f"device {args.id!r} revoked in {args.tokens}; a running server refuses it within about 1 s", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from privsplit.errors import ConfigError

    if not args.tokens.exists():
        raise ConfigError(f"--tokens {args.tokens}: no such file (`privsplit devices add` creates it)")
    for line in _lines(args.tokens):
        device = _device_of(line)
        if device:
            print(device)
    return 0
