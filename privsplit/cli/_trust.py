"""The device commands' shared trust options: ``--trust-key`` / ``--allow-unsigned`` and the warning."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_trust_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-key",
        type=Path,
        metavar="PUB",
        help="Ed25519 public key (PREFIX.pub) the bundle must be signed by; on a device release the device's "
        "trust root (DEVICE/trust/root.pub) is used without it",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="development only: do not check the signature (warns on every run)",
    )


def warn_unsigned(command: str) -> None:
    print(
        f"privsplit {command}: warning: --allow-unsigned: the bundle's signature is NOT checked "
        "(development only; the noise, quantization and encoder may have been altered)",
        file=sys.stderr,
    )


def open_verified(args: argparse.Namespace, command: str, *, kind="edge"):
    """The bundle of ``args.bundle`` verified by the device rules (:func:`privsplit.edge.trust.load_device_bundle`)."""
    from privsplit.edge.trust import load_device_bundle
    from privsplit.errors import ConfigError

    if args.allow_unsigned:
        if args.trust_key is not None:
            raise ConfigError("--allow-unsigned skips the signature check: do not pass --trust-key with it")
        warn_unsigned(command)
    return load_device_bundle(args.bundle, trust_key=args.trust_key, allow_unsigned=args.allow_unsigned, kind=kind)
