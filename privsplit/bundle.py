"""Reading and verifying bundles (torch-free: numpy and ``cryptography`` only; edge and cloud import it).

A bundle is a folder written by ``privsplit export``::

    BUNDLE/manifest.json   {"schema_version": 1, "kind": "edge"|"cloud", "version", "release", "created",
                            "files": {relpath: {"sha256", "size"}}, "classes", "features", ...}
                           ``release``: an integer that grows with every export (anti-rollback on the
                           device); bundles written before it existed read as release 0
    BUNDLE/manifest.sig    optional: {"algorithm": "ed25519", "key_id", "signature"} (JSON), where
                           ``signature`` is the base64 Ed25519 signature over the exact bytes of
                           manifest.json and ``key_id`` the first 16 hex digits of the sha256 of the
                           signing public key (raw 32 bytes)
    BUNDLE/<files>         every other file, each listed in ``files``

Verification (:func:`load_bundle`) is strict and names the offending file:

* with a trusted public key, ``manifest.sig`` must exist and verify over ``manifest.json`` (checked
  first, so a rewritten manifest is refused before its hashes are believed);
* every listed file must exist, have the listed size (else: truncated/grown) and sha256 (else: tampered);
* a file that is in the folder but not listed is refused too (nothing unverified sits beside the
  models: remove it or re-export);
* listed paths must be relative, inside the bundle, with no ``..``.

Tensor conventions recorded in the manifests (helpers below implement them):

* edge input: ``x = (pixel / 255 - preprocess.mean) / preprocess.std`` as float32 NHWC; an encoder whose
  ``input.dtype`` is int8 takes ``clip(round(x / scale) + zero_point, -128, 127)``; a float tensor has
  ``scale`` and ``zero_point`` null.
* encoder output: NHWC (``output.layout``), dequantized with its own scale/zero point when int8;
  the device transposes to ``(C, h, w)``, adds Gaussian noise of ``features.noise_sigma`` and
  quantizes with ``features.scale/zero_point`` (int8) for the wire; the cloud dequantizes and runs
  ``server.onnx`` (float32 ``[B, C, h, w]`` -> probabilities ``[B, K]``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from privsplit.errors import BundleError, require
from privsplit.noise_keying import NoiseKeying

BUNDLE_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNATURE_ALGORITHM = "ed25519"
_CHUNK = 1 << 20


class BundleKind(str, Enum):
    EDGE = "edge"
    CLOUD = "cloud"

    @property
    def a(self) -> str:
        """``"an edge bundle"`` / ``"a cloud bundle"`` for messages."""
        return f"{'an' if self.value[0] in 'aeiou' else 'a'} {self.value} bundle"


# ---- tensor and wire specs -------------------------------------------------------------------
def _quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    info = np.iinfo(np.dtype(dtype))
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((np.asarray(q).astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


@dataclass(frozen=True)
class TensorSpec:
    """One artefact input or output: dtype, shape (-1 = dynamic batch), layout and int quantization."""

    dtype: str
    shape: tuple[int, ...]
    scale: float | None = None
    zero_point: int | None = None
    layout: str = "NHWC"

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float values -> this tensor's dtype (identity cast for float tensors)."""
        if self.scale is None:  # not quantized
            return np.asarray(x, dtype=self.dtype)
        return _quantize(x, self.scale, int(self.zero_point or 0), self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if self.scale is None:  # not quantized
            return np.asarray(q, dtype=np.float32)
        return _dequantize(q, self.scale, int(self.zero_point or 0))

    def to_json(self) -> dict:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": self.scale,
            "zero_point": self.zero_point,
            "layout": self.layout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        scale = data.get("scale")
        zp = data.get("zero_point")
        return cls(
            dtype=str(data["dtype"]),
            shape=tuple(int(v) for v in data["shape"]),
            scale=None if scale is None else float(scale),
            zero_point=None if zp is None else int(zp),
            layout=str(data.get("layout", "NHWC")),
        )


@dataclass(frozen=True)
class FeatureSpec:
    """The wire format of the features: ``(C, h, w)`` int8 with one scale/zero point, after noise."""

    shape: tuple[int, int, int]
    scale: float
    zero_point: int
    noise_sigma: float
    dtype: str = "int8"
    noise_keying: NoiseKeying = NoiseKeying.FRESH  # how the device seeds the noise (privsplit.noise_keying)

    def quantize(self, z: np.ndarray) -> np.ndarray:
        return _quantize(z, self.scale, self.zero_point, self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return _dequantize(q, self.scale, self.zero_point)

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
            "noise_sigma": self.noise_sigma,
            "noise_keying": NoiseKeying(self.noise_keying).value,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSpec:
        shape = tuple(int(v) for v in data["shape"])
        if len(shape) != 3:
            raise BundleError(f"feature shape {list(shape)} is not (C, h, w): re-export the bundle")
        return cls(
            shape=(shape[0], shape[1], shape[2]),
            scale=float(data["scale"]),
            zero_point=int(data["zero_point"]),
            noise_sigma=float(data["noise_sigma"]),
            dtype=str(data.get("dtype", "int8")),
            noise_keying=_noise_keying(data.get("noise_keying", NoiseKeying.FRESH.value)),
        )


def _noise_keying(value: Any) -> NoiseKeying:
    try:
        return NoiseKeying(value)
    except ValueError:
        raise BundleError(
            f"features.noise_keying {value!r} is not one of {', '.join(k.value for k in NoiseKeying)}: "
            "this bundle needs a newer privsplit, or re-export it"
        ) from None


@dataclass(frozen=True)
class PreprocessSpec:
    """Edge preprocessing: resize to ``size``, ``x = (pixel / 255 - mean) / std``, NHWC float32."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str
    layout: str = "NHWC"

    def apply(self, images: np.ndarray) -> np.ndarray:
        """``uint8 (N, size, size, channels)`` -> float32 NHWC model input."""
        x = np.asarray(images, dtype=np.float32) / np.float32(255.0)
        return ((x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)

    def to_json(self) -> dict:
        return {
            "size": self.size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "layout": self.layout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        return cls(
            size=int(data["size"]),
            channels=int(data["channels"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            channel_order=str(data["channel_order"]),
            layout=str(data.get("layout", "NHWC")),
        )


# ---- hashing and keys --------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ed25519():
    return require("cryptography.hazmat.primitives.asymmetric.ed25519", package="cryptography", extra="edge")


def load_public_key(path: str | Path):
    """An Ed25519 public key from a PEM file written by ``privsplit keys generate`` (``PREFIX.pub``)."""
    serialization = require("cryptography.hazmat.primitives.serialization", package="cryptography", extra="edge")
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(
            f"trusted key {path} not found: pass the PREFIX.pub written by `privsplit keys generate`"
        ) from None
    except ValueError as exc:
        raise BundleError(
            f"trusted key {path} is not a PEM public key ({exc}): pass PREFIX.pub, not PREFIX.key"
        ) from None
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise BundleError(f"trusted key {path} is not an Ed25519 key: make one with `privsplit keys generate`")
    return key


def key_id(public_key) -> str:
    """First 16 hex digits of the sha256 of the raw public key: names a key in signatures and messages."""
    serialization = require("cryptography.hazmat.primitives.serialization", package="cryptography", extra="edge")
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ---- the bundle ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    """A verified bundle: ``manifest`` is the parsed manifest.json, every listed file checked."""

    root: Path
    manifest: Mapping[str, Any]
    kind: BundleKind
    version: str
    signed: bool  # manifest.sig present
    verified_key_id: str | None  # key id the signature was verified with (None: not checked)
    manifest_sha256: str = ""  # sha256 hex of the exact manifest.json bytes: the bundle's identity on the wire

    @property
    def release(self) -> int:
        """The anti-rollback number (0 for bundles exported before releases were numbered)."""
        return manifest_release(self.manifest)

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"{name} is not listed in {self.root / MANIFEST}: it is not part of this bundle")
        return self.root / name

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec.from_json(self.manifest["features"])

    @property
    def preprocess(self) -> PreprocessSpec:
        self._need(BundleKind.EDGE, "preprocess")
        return PreprocessSpec.from_json(self.manifest["preprocess"])

    def encoder(self, name: str | None = None) -> tuple[Path, TensorSpec, TensorSpec]:
        """``(path, input spec, output spec)`` of an encoder format (default: ``default_encoder``)."""
        self._need(BundleKind.EDGE, "encoders")
        name = name or self.manifest["default_encoder"]
        entry = self.manifest["encoders"].get(name)
        if entry is None:
            raise BundleError(f"{self.root} has no encoder {name!r}; it has {sorted(self.manifest['encoders'])}")
        return self.file(entry["file"]), TensorSpec.from_json(entry["input"]), TensorSpec.from_json(entry["output"])

    def _need(self, kind: BundleKind, what: str) -> None:
        if self.kind is not kind:
            raise BundleError(f"{self.root} is {self.kind.a}; {what} lives in the {kind.value} bundle")


def manifest_release(manifest: Mapping[str, Any]) -> int:
    """``manifest["release"]`` (0 when absent: written before releases were numbered)."""
    value = manifest.get("release", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BundleError(f"{MANIFEST}: release {value!r} is not an integer >= 0: re-export the bundle")
    return value


def signer_key_id(root: Path) -> str | None:
    """The ``key_id`` that ``manifest.sig`` names (None when there is no signature; not verified here)."""
    sig_path = Path(root) / SIGNATURE
    if not sig_path.is_file():
        return None
    try:
        return str(json.loads(sig_path.read_bytes())["key_id"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BundleError(
            f"{sig_path} is malformed: expected JSON with algorithm, key_id and base64 signature"
        ) from None


def _read_manifest(root: Path) -> tuple[bytes, dict]:
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(
            f"bundle folder {root} does not exist: pass OUT/edge or OUT/cloud written by `privsplit export`"
        )
    if not path.is_file():
        raise BundleError(f"{path} missing: {root} is not a bundle (re-export with `privsplit export`)")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}): the manifest is damaged, re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} is not a JSON object: re-export the bundle")
    return raw, manifest


def _verify_signature(root: Path, raw: bytes, trust_key) -> str:
    public = load_public_key(trust_key) if isinstance(trust_key, (str, Path)) else trust_key
    wanted = key_id(public)
    sig_path = root / SIGNATURE
    if not sig_path.is_file():
        raise BundleError(
            f"{sig_path} missing: the bundle is unsigned but a trusted key was given (export with --sign-key)"
        )
    try:
        sig = json.loads(sig_path.read_bytes())
        signature = base64.b64decode(sig["signature"], validate=True)
        algorithm, signer = sig.get("algorithm"), sig.get("key_id")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BundleError(
            f"{sig_path} is malformed: expected JSON with algorithm, key_id and base64 signature"
        ) from None
    if algorithm != SIGNATURE_ALGORITHM:
        raise BundleError(f"{sig_path} uses algorithm {algorithm!r}; only {SIGNATURE_ALGORITHM} is accepted")
    exceptions = require("cryptography.exceptions", package="cryptography", extra="edge")
    try:
        public.verify(signature, raw)
    except exceptions.InvalidSignature:
        if signer != wanted:
            raise BundleError(f"{sig_path}: signed by key {signer}, not by the trusted key {wanted}") from None
        raise BundleError(
            f"{sig_path}: signature does not match {root / MANIFEST} (the manifest was altered after signing)"
        ) from None
    return wanted


def _safe_relpath(root: Path, name: str) -> Path:
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or ".." in rel.parts or name in (MANIFEST, SIGNATURE) or "\\" in name:
        raise BundleError(f"{root / MANIFEST} lists an unsafe file path {name!r}: refusing the bundle")
    return root / rel


def _verify_files(root: Path, files: Mapping[str, Any]) -> None:
    for name, entry in files.items():
        path = _safe_relpath(root, name)
        try:
            size, digest = int(entry["size"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            raise BundleError(
                f"{root / MANIFEST}: the entry of {name} lacks sha256/size: re-export the bundle"
            ) from None
        if not path.is_file():
            raise BundleError(f"{path} missing: the bundle lists it (restore it or re-export the bundle)")
        actual = path.stat().st_size
        if actual != size:
            what = "truncated" if actual < size else "has extra bytes"
            raise BundleError(
                f"{path} {what}: {actual} bytes, the manifest says {size} (re-copy or re-export the bundle)"
            )
        if sha256_file(path) != digest:
            raise BundleError(
                f"{path} is tampered: its sha256 does not match the manifest (re-copy or re-export the bundle)"
            )
    listed = {str(PurePosixPath(n)) for n in files} | {MANIFEST, SIGNATURE}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in listed:
            raise BundleError(f"{path} is not listed in the manifest: remove it (bundles hold only verified files)")


def _check_structure(root: Path, manifest: Mapping[str, Any], kind: BundleKind | str | None) -> BundleKind:
    where = root / MANIFEST
    if manifest.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise BundleError(
            f"{where} has schema_version {manifest.get('schema_version')!r}; this privsplit reads "
            f"{BUNDLE_SCHEMA_VERSION} (re-export the bundle or upgrade privsplit)"
        )
    for key in ("kind", "version", "files", "classes", "features"):
        if key not in manifest:
            raise BundleError(f"{where} lacks {key!r}: re-export the bundle")
    try:
        manifest_release(manifest)
    except BundleError as exc:
        raise BundleError(f"{root / str(exc)}") from None
    try:
        actual = BundleKind(manifest["kind"])
    except ValueError:
        raise BundleError(f"{where} has unknown kind {manifest['kind']!r}") from None
    if kind is not None and actual is not BundleKind(kind):
        raise BundleError(f"{root} is {actual.a}, {BundleKind(kind).a} was expected")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{where}: 'files' must be an object of relpath -> {{sha256, size}}")
    files = manifest["files"]
    required = (
        ("preprocess", "encoders", "default_encoder")
        if actual is BundleKind.EDGE
        else ("server", "purifier", "accepted_encoder_hashes")
    )
    for key in required:
        if key not in manifest:
            raise BundleError(f"{where} lacks {key!r} required in {actual.a}: re-export it")
    if actual is BundleKind.EDGE:
        if manifest["default_encoder"] not in manifest["encoders"]:
            raise BundleError(f"{where}: default_encoder {manifest['default_encoder']!r} is not among its encoders")
        for name, entry in manifest["encoders"].items():
            f = entry.get("file")
            if f not in files or files[f].get("sha256") != entry.get("sha256"):
                raise BundleError(f"{where}: encoder {name} names {f!r}, which is not listed with the same sha256")
    else:
        for key in ("server", "purifier"):
            entry = manifest[key]
            if entry is not None and entry.get("file") not in files:
                raise BundleError(f"{where}: {key} file {entry.get('file')!r} is not listed in 'files'")
    return actual


def _check_specs(manifest: Mapping[str, Any], kind: BundleKind) -> None:
    """Parse every spec the :class:`Bundle` properties return, so a damaged manifest fails at load, not later."""
    FeatureSpec.from_json(manifest["features"])
    tuple(str(c) for c in manifest["classes"])
    if kind is BundleKind.EDGE:
        PreprocessSpec.from_json(manifest["preprocess"])
        for entry in manifest["encoders"].values():
            TensorSpec.from_json(entry["input"]), TensorSpec.from_json(entry["output"])


def load_bundle(path: str | Path, *, trust_key=None, kind: BundleKind | str | None = None) -> Bundle:
    """Verify and open a bundle; raise :class:`BundleError` naming the offending file.

    With ``trust_key`` (the path of a PEM Ed25519 public key, or an ``Ed25519PublicKey``), the manifest
    must carry a valid signature by it. Without, only hashes and sizes are checked (integrity, not
    authenticity).
    """
    root = Path(path)
    raw, manifest = _read_manifest(root)
    verified = _verify_signature(root, raw, trust_key) if trust_key is not None else None
    try:
        actual = _check_structure(root, manifest, kind)
        _check_specs(manifest, actual)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"lacks {exc}" if isinstance(exc, KeyError) else f"has a malformed entry ({type(exc).__name__}: {exc})"
        fix = "re-export the bundle with `privsplit export`"
        raise BundleError(f"{root / MANIFEST} is damaged, it {what}: {fix}") from None
    _verify_files(root, manifest["files"])
    return Bundle(
        root=root,
        manifest=manifest,
        kind=actual,
        version=str(manifest["version"]),
        signed=(root / SIGNATURE).is_file(),
        verified_key_id=verified,
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
    )


# ---- key endorsements (rotation) -----------------------------------------------------------------
ENDORSEMENTS = "key-endorsements.json"  # a bundle file: a JSON list of endorsements, oldest first


def endorsement_payload(body: Mapping[str, Any]) -> bytes:
    """The bytes an endorsement's signature covers: its fields but the signature, canonical JSON."""
    fields = {k: body[k] for k in ("algorithm", "endorser", "key", "key_id", "revokes")}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def public_key_from_pem(pem: bytes | str, *, where: str):
    serialization = require("cryptography.hazmat.primitives.serialization", package="cryptography", extra="edge")
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        raise BundleError(f"{where} does not hold a PEM public key") from None
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise BundleError(f"{where} holds a key that is not Ed25519")
    return key


@dataclass(frozen=True)
class Endorsement:
    """``endorser`` (a key id) vouches for ``key`` (PEM; id ``key_id``) and revokes ``revokes``."""

    endorser: str
    key_pem: str
    key_id: str
    revokes: tuple[str, ...]
    signature: bytes

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> Endorsement:
        try:
            endorsement = cls(
                endorser=str(data["endorser"]),
                key_pem=str(data["key"]),
                key_id=str(data["key_id"]),
                revokes=tuple(str(r) for r in data["revokes"]),
                signature=base64.b64decode(data["signature"], validate=True),
            )
            algorithm = data["algorithm"]
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"{where} is malformed: write it with `privsplit keys endorse`") from None
        if algorithm != SIGNATURE_ALGORITHM:
            raise BundleError(f"{where} uses algorithm {algorithm!r}; only {SIGNATURE_ALGORITHM} is accepted")
        if key_id(endorsement.public_key(where=where)) != endorsement.key_id:
            raise BundleError(f"{where}: the endorsed key does not match its key_id {endorsement.key_id}")
        return endorsement

    def public_key(self, *, where: str):
        return public_key_from_pem(self.key_pem, where=where)

    def verify(self, endorser_key, *, where: str) -> None:
        exceptions = require("cryptography.exceptions", package="cryptography", extra="edge")
        body = {
            "algorithm": SIGNATURE_ALGORITHM,
            "endorser": self.endorser,
            "key": self.key_pem,
            "key_id": self.key_id,
            "revokes": list(self.revokes),
        }
        try:
            endorser_key.verify(self.signature, endorsement_payload(body))
        except exceptions.InvalidSignature:
            raise BundleError(
                f"{where}: the endorsement of key {self.key_id} is not signed by key {self.endorser}"
            ) from None


def read_endorsements(root: Path) -> tuple[Endorsement, ...]:
    """The endorsements a bundle carries (``key-endorsements.json``, listed in its manifest), oldest first."""
    path = Path(root) / ENDORSEMENTS
    if not path.is_file():
        return ()
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise BundleError(f"{path} is not valid JSON: re-export with `privsplit export --endorsement`") from None
    items = data if isinstance(data, list) else [data]
    return tuple(Endorsement.from_json(item, where=f"{path}[{i}]") for i, item in enumerate(items))
