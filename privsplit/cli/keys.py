"""``privsplit keys generate`` (Ed25519 signing keys) and ``privsplit verify BUNDLE`` (integrity + signature)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="make the Ed25519 key pair that signs bundles")
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

    verify = sub.add_parser(
        "verify",
        help="check a bundle's files against its manifest (and its signature with --trust-key)",
        description="Verify a bundle written by `privsplit export`: every file's size and sha256, no "
        "unlisted files, and with --trust-key the Ed25519 signature of manifest.json. Exits 0 when "
        "intact, else non-zero with one line naming the offending file.",
    )
    verify.add_argument("bundle", type=Path, metavar="BUNDLE", help="OUT/edge or OUT/cloud")
    verify.add_argument(
        "--trust-key", type=Path, metavar="PUB", help="public key (PREFIX.pub) the manifest must be signed with"
    )
    verify.add_argument("--kind", choices=["edge", "cloud"], help="also require this bundle kind")
    verify.set_defaults(handler=_verify)


def _generate(args: argparse.Namespace) -> int:
    from privsplit.export.signing import generate_keys

    pair = generate_keys(args.out, overwrite=args.force)
    print(f"wrote {pair.private} (private, mode 0600) and {pair.public} (public); key id {pair.key_id}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from privsplit.bundle import load_bundle

    bundle = load_bundle(args.bundle, trust_key=args.trust_key, kind=args.kind)
    if bundle.verified_key_id:
        sig = f"signature verified (key {bundle.verified_key_id})"
    else:
        sig = "signed, signature not checked (no --trust-key)" if bundle.signed else "unsigned"
    print(f"ok: {bundle.kind.value} bundle {bundle.version}, {len(bundle.manifest['files'])} files intact; {sig}")
    return 0
