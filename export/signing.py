"""Ed25519 keys for bundles: ``privsplit keys generate`` and signing manifests.

``PREFIX.key``: the private key, PKCS#8 PEM, unencrypted, created with file mode 0600 (never
overwritten unless asked). ``PREFIX.pub``: the public key, SubjectPublicKeyInfo PEM: give it to the
devices and hosts that verify bundles (``--trust-key``). Verification lives in
:mod:`privsplit.bundle` (torch-free).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from privsplit.bundle import SIGNATURE_ALGORITHM, key_id
from privsplit.errors import ConfigError, require


def _crypto():
    ed = require("cryptography.hazmat.primitives.asymmetric.ed25519", package="cryptography", extra="export")
    ser = require("cryptography.hazmat.primitives.serialization", package="cryptography", extra="export")
    return ed, ser


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def generate_keys(prefix: str | Path, *, overwrite: bool = False) -> KeyPair:
    """Write ``PREFIX.key`` (mode 0600) and ``PREFIX.pub``; refuse to replace existing files unless ``overwrite``."""
    ed, ser = _crypto()
    prefix = Path(prefix)
    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise ConfigError(f"{path} already exists: choose another --out PREFIX or pass --force to replace it")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ed.Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    if overwrite and private_path.exists():
        private_path.unlink()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(private_path, 0o600)  # in case the umask or the filesystem widened it
    public = key.public_key()
    public_path.write_bytes(public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private=private_path, public=public_path, key_id=key_id(public))


def load_private_key(path: str | Path):
    ed, ser = _crypto()
    path = Path(path)
    try:
        key = ser.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(
            f"signing key {path} not found: make one with `privsplit keys generate --out PREFIX`"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key ({exc}): pass PREFIX.key, not PREFIX.pub"
        ) from None
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key: make one with `privsplit keys generate`")
    mode = path.stat().st_mode & 0o077
    if mode:
        raise ConfigError(
            f"signing key {path} is readable by others (mode {oct(path.stat().st_mode & 0o777)}): chmod 600 {path}"
        )
    return key


def sign_bytes(private_key, payload: bytes) -> bytes:
    """The ``manifest.sig`` content: JSON with the algorithm, the signer's key id and the base64 signature."""
    signature = private_key.sign(payload)
    body = {
        "algorithm": SIGNATURE_ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return (json.dumps(body, indent=2) + "\n").encode()


def endorse_key(private_key, new_public: str | Path, *, revokes: tuple[str, ...] = ()) -> bytes:
    """A key endorsement (JSON bytes): the current root ``private_key`` vouches for the key in ``new_public``
    (PREFIX.pub) and revokes the key ids in ``revokes``. A device whose trust root is the endorser accepts a
    bundle signed by the new key when the bundle carries this endorsement, then makes the new key its root.
    The format and its check live in :mod:`privsplit.edge.trust`."""
    from privsplit.bundle import endorsement_payload, load_public_key

    ed, ser = _crypto()
    public = load_public_key(new_public)
    pem = public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    endorser = key_id(private_key.public_key())
    new_id = key_id(public)
    bad = [r for r in revokes if len(r) != 16 or any(c not in "0123456789abcdef" for c in r)]
    if bad:
        raise ConfigError(f"--revoke {bad[0]!r} is not a key id (16 hex digits, as `privsplit keys generate` prints)")
    if new_id == endorser:
        raise ConfigError(f"{new_public} is the endorsing key itself: endorse the NEW public key")
    if endorser in revokes or new_id in revokes:
        raise ConfigError("an endorsement cannot revoke its own endorser or the key it endorses")
    body = {
        "algorithm": SIGNATURE_ALGORITHM,
        "endorser": endorser,
        "key": pem,
        "key_id": new_id,
        "revokes": sorted(revokes),
    }
    signature = private_key.sign(endorsement_payload(body))
    return (json.dumps({**body, "signature": base64.b64encode(signature).decode("ascii")}, indent=2) + "\n").encode()
