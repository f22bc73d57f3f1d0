"""``privsplit keys generate|endorse`` (Ed25519 signing keys, rotation) and ``privsplit verify BUNDLE``."""

from __future__ import annotations

import argparse
from pathlib import Path

from privsplit.cli._trust import add_trust_args


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="make the Ed25519 key pair that signs bundles; endorse a new key (rotation)")
    kinds = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = kinds.add_parser(
        "generate",
        help="write PREFIX.key (private, mode 0600) and PREFIX.pub (public)",
        description="Generate an Ed25519 key pair: PREFIX.key (PKCS#8 PEM, unencrypted, file mode 0600; "
        "pass it to `privsplit export --sign-key`) and PREFIX.pub (give it to devices and hosts: "
        "`--trust-key`). Existing files are never replaced without --force.",
    )
    gen.add_argument("--out", required=True, type=Path, metavar="PREFIX", help="path prefix of the two key files")
    gen.add_argument("--force", action="store_true", help="replace existing PREFIX.key / PREFIX.pub")
    gen.set_defaults(handler=_generate)
    endorse = kinds.add_parser(
        "endorse",
        help="rotate keys: the current root key signs a new public key (ship it with export --endorsement)",
        description="Write a key endorsement: the device's current trust root (--key, its private key) vouches for "
        "the NEW public key and may revoke other key ids. Pass the file to `privsplit export --endorsement FILE "
        "--sign-key NEW.key`: a device whose root is the endorser accepts that bundle, makes NEW its root and "
        "refuses the old key from then on.",
    )
    endorse.add_argument("--key", required=True, type=Path, metavar="ROOT.key", help="the current root's private key")
    endorse.add_argument("--new", required=True, type=Path, metavar="NEW.pub", help="the new public key to trust")
    endorse.add_argument(
        "--revoke", action="append", default=[], metavar="KEYID", help="also revoke this key id (repeatable)"
    )
    endorse.add_argument("--out", required=True, type=Path, metavar="FILE", help="the endorsement to write (JSON)")
    endorse.add_argument("--force", action="store_true", help="replace an existing FILE")
    endorse.set_defaults(handler=_endorse)

    verify = sub.add_parser(
        "verify",
        help="check a bundle's signature and files (against --trust-key or the device's trust root)",
        description="Verify a bundle written by `privsplit export`: the Ed25519 signature of manifest.json "
        "(with --trust-key, or on a device release DEVICE/current against DEVICE/trust/root.pub), every file's size "
        "and sha256, no unlisted files. Exits 0 when signed by the trusted key and intact, else non-zero with one "
        "line naming the offending file; a signature that cannot be checked (no key) fails unless --allow-unsigned. "
        "Then prints what the export's leakage gate measured (or that the bundle records none).",
    )
    verify.add_argument("bundle", type=Path, metavar="BUNDLE", help="OUT/edge, OUT/cloud or DEVICE/current")
    add_trust_args(verify)
    verify.add_argument("--kind", choices=["edge", "cloud"], help="also require this bundle kind")
    verify.set_defaults(handler=_verify)


def _generate(args: argparse.Namespace) -> int:
    from privsplit.export.signing import generate_keys

    pair = generate_keys(args.out, overwrite=args.force)
    print(f"wrote {pair.private} (private, mode 0600) and {pair.public} (public); key id {pair.key_id}")
    return 0


def _endorse(args: argparse.Namespace) -> int:
    import json

    from privsplit.errors import ConfigError
    from privsplit.export.signing import endorse_key, load_private_key
    from privsplit.results import atomic_write

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} already exists: choose another --out or pass --force to replace it")
    data = endorse_key(load_private_key(args.key), args.new, revokes=tuple(args.revoke))
    atomic_write(args.out, data)
    body = json.loads(data)
    revoked = f"; revokes {', '.join(body['revokes'])}" if body["revokes"] else ""
    print(f"wrote {args.out}: key {body['endorser']} endorses key {body['key_id']}{revoked}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from privsplit.cli._trust import open_verified

    bundle = open_verified(args, "verify", kind=args.kind)
    if bundle.verified_key_id:
        sig = f"signature verified (key {bundle.verified_key_id})"
    else:
        sig = "signature NOT checked (--allow-unsigned)" + ("" if bundle.signed else "; unsigned")
    print(
        f"ok: {bundle.kind.value} bundle {bundle.version} (release {bundle.release}), "
        f"{len(bundle.manifest['files'])} files intact; {sig}; manifest sha256 {bundle.manifest_sha256}"
    )
    from privsplit.leakage_gate import manifest_gate_summary

    print(manifest_gate_summary(bundle.manifest))  # what the export's leakage gate measured (signed with it)
    return 0
