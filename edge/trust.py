"""The device's trust root: which key a device accepts bundles from, rotation, revocation, anti-rollback.

Device layout (beside ``releases/``, see :mod:`privsplit.edge.flash`)::

    DEVICE/trust/root.pub         the one Ed25519 public key the device trusts (PEM; installed by the first
                                  ``privsplit flash --trust-key PREFIX.pub``)
    DEVICE/trust/revoked          key ids the device refuses forever, one a line: ``KEYID reason``
    DEVICE/trust/newest-release   the highest ``release`` number ever installed (anti-rollback)

Every flash and every load of a device release (``edge infer``, ``edge bench``, ``edge selftest``,
``verify``) checks the manifest signature against ``root.pub`` by default: :func:`load_device_bundle`
is the one function that opens a device release verified against its trust root.

Rotation (TUF's root rotation, reduced to one key): the current root signs the new public key
(``privsplit keys endorse``); the export ships that endorsement in the bundle (``key-endorsements.json``,
a listed and hashed bundle file). A device whose root is the endorser accepts the bundle signed by the new
key and, on that flash, makes the new key its root and records the old one as rotated out. Endorsements
chain (A -> B -> C), so a device that missed a rotation still follows. An endorsement may also revoke key
ids: they go to ``trust/revoked`` and are refused even if a later endorsement names them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from privsplit.bundle import (
    MANIFEST,
    SIGNATURE,
    Bundle,
    BundleKind,
    load_bundle,
    load_public_key,
    public_key_from_pem,
    read_endorsements,
    signer_key_id,
)
from privsplit.bundle import key_id as _key_id
from privsplit.errors import BundleError, require

TRUST_DIR = "trust"
ROOT_KEY = "root.pub"
REVOKED = "revoked"
NEWEST_RELEASE = "newest-release"
_REASON = re.compile(r"[^A-Za-z0-9 ._()-]")
FIX_UNSIGNED = "--allow-unsigned for development only"


def _pem(public_key) -> str:
    ser = require("cryptography.hazmat.primitives.serialization", package="cryptography", extra="edge")
    return public_key.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def as_public_key(key):
    """A trusted key given as a path (PREFIX.pub) or an ``Ed25519PublicKey``."""
    return load_public_key(key) if isinstance(key, (str, Path)) else key


@dataclass(frozen=True)
class TrustState:
    """What a device trusts: its root key (PEM), revoked key ids (id -> reason), the newest release installed."""

    root_pem: str | None = None
    revoked: Mapping[str, str] = field(default_factory=dict)
    newest_release: int | None = None

    @property
    def root(self):
        return None if self.root_pem is None else public_key_from_pem(self.root_pem, where=f"{TRUST_DIR}/{ROOT_KEY}")

    @property
    def root_id(self) -> str | None:
        return None if self.root_pem is None else _key_id(self.root)

    @classmethod
    def read(cls, device: Path) -> TrustState:
        """The trust state of a local device folder (empty when it has none)."""
        trust = Path(device) / TRUST_DIR
        root = trust / ROOT_KEY
        revoked = trust / REVOKED
        newest = trust / NEWEST_RELEASE
        return cls.parse(
            root=root.read_text() if root.is_file() else None,
            revoked=revoked.read_text() if revoked.is_file() else "",
            newest=newest.read_text() if newest.is_file() else "",
            where=str(trust),
        )

    @classmethod
    def parse(cls, *, root: str | None, revoked: str, newest: str, where: str) -> TrustState:
        entries = {}
        for line in revoked.splitlines():
            kid, _, reason = line.strip().partition(" ")
            if kid:
                entries[kid] = reason or "revoked"
        newest = newest.strip()
        if newest and not newest.isdigit():
            raise BundleError(f"{where}/{NEWEST_RELEASE} holds {newest!r}, not a release number: fix or remove it")
        state = cls(root_pem=root, revoked=entries, newest_release=int(newest) if newest else None)
        if root is not None:
            public_key_from_pem(root, where=f"{where}/{ROOT_KEY}")  # damaged: say so now
        return state

    def files(self) -> dict[str, str]:
        """``{name under trust/: content}`` to write on the device."""
        out = {REVOKED: "".join(f"{k} {_REASON.sub('-', v)}\n" for k, v in sorted(self.revoked.items()))}
        if self.root_pem is not None:
            out[ROOT_KEY] = self.root_pem
        if self.newest_release is not None:
            out[NEWEST_RELEASE] = f"{self.newest_release}\n"
        return out


@dataclass(frozen=True)
class SignatureCheck:
    """The key a bundle's signature is verified with, and the device's trust state once it is installed."""

    key: object  # Ed25519PublicKey
    signer: str
    state: TrustState  # unchanged, or rotated to the endorsed signer
    rotated: bool = False


def check_signer(bundle_root: Path, state: TrustState, *, device: str) -> SignatureCheck:
    """Which key verifies ``bundle_root``'s signature on a device with ``state`` (a root must be installed):
    the root itself, or a key the root endorsed (chain carried by the bundle). Raises BundleError naming
    ``manifest.sig`` and the fix; the signature itself is checked by :func:`load_bundle` with the key."""
    root_key, root_id = state.root, state.root_id
    sig = Path(bundle_root) / SIGNATURE
    signer = signer_key_id(bundle_root)
    if signer is None:
        raise BundleError(
            f"{sig} missing: the bundle is unsigned and {device} trusts only key {root_id}: "
            f"export with --sign-key (the private key of {root_id}), or pass {FIX_UNSIGNED}"
        )
    if signer in state.revoked:
        raise BundleError(
            f"{sig}: signed by key {signer}, which {device} no longer trusts ({state.revoked[signer]}); "
            f"its trust root is {root_id}: re-sign the bundle with that key (`privsplit export --sign-key`)"
        )
    if signer == root_id:
        return SignatureCheck(key=root_key, signer=signer, state=state)
    revoked: dict[str, str] = dict(state.revoked)
    current_id: str = str(root_id)
    current_key, pem = root_key, None
    endorsements = list(read_endorsements(bundle_root))
    while current_id != signer:
        step = next((e for e in endorsements if e.endorser == current_id and e.key_id not in revoked), None)
        if step is None:
            break
        endorsements.remove(step)
        step.verify(current_key, where=str(Path(bundle_root) / "key-endorsements.json"))
        revoked[current_id] = f"rotated out (endorsed {step.key_id})"
        revoked.update({r: f"revoked by key {current_id}" for r in step.revokes})
        current_id, current_key, pem = step.key_id, step.public_key(where=f"endorsement of {step.key_id}"), step.key_pem
    if current_id != signer or pem is None:
        raise BundleError(
            f"{sig}: signed by key {signer}, not by {device}'s trust root {root_id}, and no endorsement by "
            f"{root_id} leads to it: sign with the root key, or rotate (`privsplit keys endorse`, then "
            "`privsplit export --endorsement`)"
        )
    if signer in revoked:
        raise BundleError(f"{sig}: signed by key {signer}, which its own endorsement chain revokes: re-sign the bundle")
    rotated = TrustState(root_pem=pem, revoked=revoked, newest_release=state.newest_release)
    return SignatureCheck(key=current_key, signer=signer, state=rotated, rotated=True)


def find_device(path: str | Path) -> Path | None:
    """The device folder a release path belongs to: ``DEVICE/current`` or ``DEVICE/releases/V`` (else None)."""
    path = Path(path)
    candidates = []
    if path.name == "current":
        candidates.append(path.parent)
    if path.parent.name == "releases":
        candidates.append(path.parent.parent)
    resolved = path.resolve()
    if resolved.parent.name == "releases":
        candidates.append(resolved.parent.parent)
    for device in candidates:
        if (device / "releases").is_dir():
            return device
    return None


def load_device_bundle(
    path: str | Path,
    *,
    trust_key=None,
    allow_unsigned: bool = False,
    kind: BundleKind | str | None = BundleKind.EDGE,
) -> Bundle:
    """Open a bundle verified against its trust root: THE loader of every device command.

    * a release on a device (``DEVICE/current``, ``DEVICE/releases/V``) with ``DEVICE/trust/root.pub``: the
      signature must verify with that root (or a key it endorsed); ``trust_key``, if given, must be the root;
    * any other folder (``OUT/edge``): the signature must verify with ``trust_key``;
    * ``allow_unsigned``: integrity (hashes) only; the caller warns on every run.

    Raises :class:`BundleError` with one line naming the file and the fix.
    """
    path = Path(path)
    if allow_unsigned:
        return load_bundle(path, kind=kind)
    device = find_device(path)
    state = TrustState.read(device) if device is not None else TrustState()
    explicit = None if trust_key is None else as_public_key(trust_key)
    if state.root_pem is not None:
        if explicit is not None and _key_id(explicit) != state.root_id:
            raise BundleError(
                f"--trust-key {trust_key} is key {_key_id(explicit)}, but {device} trusts {state.root_id} "
                f"({device}/{TRUST_DIR}/{ROOT_KEY}): drop --trust-key (the device's root is used)"
            )
        check = check_signer(path, state, device=str(device))
        return load_bundle(path, trust_key=check.key, kind=kind)
    if explicit is not None:
        return load_bundle(path, trust_key=explicit, kind=kind)
    load_bundle(path, kind=kind)  # a damaged or tampered bundle is named as such first
    where = f"{device} has no {TRUST_DIR}/{ROOT_KEY}" if device is not None else "no trusted key was given"
    raise BundleError(
        f"{path / MANIFEST}: its signature cannot be checked ({where}): pass --trust-key PREFIX.pub, install "
        f"the device's trust root with `privsplit flash --trust-key PREFIX.pub`, or pass {FIX_UNSIGNED}"
    )


def public_pem(key) -> str:
    """PEM text of a trusted key (path or key object)."""
    return _pem(as_public_key(key))


def key_id_of(key) -> str:
    return _key_id(as_public_key(key))
