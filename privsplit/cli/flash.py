"""``privsplit flash``: install an edge bundle on a device (a folder or ssh://), or roll back."""

from __future__ import annotations

import argparse
from pathlib import Path

from privsplit.cli._common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flash",
        help="install an edge bundle on a device (folder or ssh://) with an atomic switch; --rollback",
        description="Verify BUNDLE against the device's trust root (signature, then hashes; the first --trust-key "
        "installs TARGET/trust/root.pub, later flashes check against it; a release older than the newest the device "
        "has had is refused without --allow-downgrade), copy it to TARGET/releases/<version>/ "
        "(a folder, or ssh://user@host[:port]/path with the system ssh/scp), verify every hash on the device, "
        "then atomically switch the TARGET/current link. An interrupted or failed transfer leaves the previous "
        "release active. Keeps the last --keep releases; --rollback switches back to the previous one.",
    )
    p.add_argument(
        "bundle", nargs="?", type=Path, metavar="BUNDLE", help="edge bundle folder (OUT/edge); not with --rollback"
    )
    p.add_argument(
        "--to", required=True, metavar="TARGET", help="device folder, or ssh://user@host[:port]/absolute/path"
    )
    p.add_argument(
        "--keep", type=positive_int, default=3, metavar="N", help="releases to keep on the device (default %(default)s)"
    )
    p.add_argument(
        "--trust-key",
        type=Path,
        metavar="PUB",
        help="Ed25519 public key (PREFIX.pub) the bundle must be signed by; installed as the device's trust root "
        "when it has none (later flashes need not repeat it)",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="development only: do not check the signature (warns on every run)",
    )
    p.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="install a release older than the newest the device has had (anti-rollback override)",
    )
    p.add_argument("--rollback", action="store_true", help="switch current back to the previously active release")
    p.add_argument("--identity", type=Path, metavar="KEY", help="ssh private key (ssh -i)")
    p.add_argument(
        "--known-hosts",
        type=Path,
        metavar="FILE",
        help="pinned host keys for ssh (strict host key checking with this file)",
    )
    p.add_argument(
        "--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="extra ssh -o option (repeatable)"
    )
    p.add_argument(
        "--limit-kbps", type=positive_int, metavar="N", help="cap the scp bandwidth at N Kbit/s (slow links)"
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON to FILE")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from privsplit.cli._trust import warn_unsigned
    from privsplit.edge.flash import flash, parse_target, rollback
    from privsplit.errors import ConfigError

    ssh = {
        "identity": args.identity,
        "known_hosts": args.known_hosts,
        "options": tuple(args.ssh_option),
        "limit_kbps": args.limit_kbps,
    }
    if not args.to.startswith("ssh://") and any(v for v in ssh.values()):
        raise ConfigError("--identity/--known-hosts/--ssh-option/--limit-kbps apply to ssh:// targets only")
    target = parse_target(args.to, **ssh) if args.to.startswith("ssh://") else parse_target(args.to)
    if args.allow_unsigned:
        warn_unsigned("flash")
    if args.rollback:
        if args.bundle is not None:
            raise ConfigError("--rollback takes no BUNDLE: it switches back to the previous release on the device")
        result = rollback(target, allow_unsigned=args.allow_unsigned)
    else:
        if args.bundle is None:
            raise ConfigError("give the BUNDLE to flash (OUT/edge from `privsplit export`), or --rollback")
        result = flash(
            args.bundle,
            target,
            keep=args.keep,
            trust_key=args.trust_key,
            allow_unsigned=args.allow_unsigned,
            allow_downgrade=args.allow_downgrade,
        )
    print(result.summary())
    if args.json is not None:
        result.save(args.json)
    return 0
