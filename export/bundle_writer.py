"""Writing bundles: hash every file, write ``manifest.json`` and, with a key, ``manifest.sig``.

The reading side (and the format) is :mod:`privsplit.bundle`; :func:`write_bundle` re-opens what it
wrote with :func:`privsplit.bundle.load_bundle`, so a bundle that export hands over has passed the
same check a device runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from privsplit.bundle import BUNDLE_SCHEMA_VERSION, MANIFEST, SIGNATURE, Bundle, BundleKind, load_bundle, sha256_file
from privsplit.errors import ExportError
from privsplit.results import atomic_write


def file_entries(root: Path) -> dict[str, dict[str, Any]]:
    """``{relpath: {"sha256", "size"}}`` of every file under ``root`` except the manifest and signature."""
    entries = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in (MANIFEST, SIGNATURE):
            entries[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return entries


def default_release() -> int:
    """The release number of an export that names none: the Unix time in seconds (monotone across exports)."""
    return int(time.time())


def _release(body: Mapping[str, Any], release: int | None) -> int:
    value = release if release is not None else body.get("release", default_release())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ExportError(f"release must be an integer >= 0, got {value!r}")
    return value


def write_bundle(
    root: Path,
    *,
    kind: BundleKind,
    version: str,
    body: Mapping[str, Any],
    sign_key=None,
    release: int | None = None,
) -> Bundle:
    """Write the manifest of the files already in ``root`` (+ the signature) and verify the result.

    ``body`` holds the kind-specific keys (classes, features, preprocess/encoders or server/purifier);
    ``sign_key`` is an Ed25519 private key object; the signature just written is verified with its
    public key. ``release`` (the anti-rollback number) defaults to ``body["release"]``, else the current Unix
    time in seconds: it grows with every export made on a machine with a sane clock.
    """
    from privsplit.export.signing import sign_bytes

    for stale in (MANIFEST, SIGNATURE):
        (root / stale).unlink(missing_ok=True)
    manifest = {
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "kind": kind.value,
        "version": version,
        "release": _release(body, release),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": file_entries(root),
        **{k: v for k, v in body.items() if k != "release"},
    }
    for key in ("schema_version", "kind", "version", "created", "files"):
        if key in body:
            raise ExportError(f"bundle body must not set {key!r} (the writer does)")
    raw = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(root / MANIFEST, raw)  # the signed bytes exactly; written whole or not at all
    if sign_key is not None:
        atomic_write(root / SIGNATURE, sign_bytes(sign_key, raw))
    return load_bundle(root, kind=kind, trust_key=None if sign_key is None else sign_key.public_key())
