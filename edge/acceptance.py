"""The on-device acceptance check: run the bundle's reference vectors and compare the int8 wire features bit for bit.

The same signed encoder file can give other INT8 values on another CPU: an interpreter picks its kernels by
the CPU features it detects (under qemu-user's ``max`` CPU model, LiteRT's XNNPACK returned 16,290 wrong values
of 16,384 on the digits bundle). Export therefore ships ``reference_vectors.npz`` (a few inputs and each
encoder's expected wire features, listed in the signed manifest; :mod:`privsplit.export.reference_vectors`).
:func:`check_bundle` verifies the bundle first (hashes; the signature with a trust key), then runs every
shipped encoder the device has a runtime for through the device pipeline, without channel noise, and counts
the values that differ. ``privsplit edge selftest`` runs it at any time; ``privsplit flash`` runs it on the
staged release before switching ``current``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from privsplit.bundle import Bundle, BundleKind, load_bundle
from privsplit.errors import BundleError, MissingDependencyError, PrivsplitError
from privsplit.results import check_schema, from_dict, to_dict

ACCEPTANCE_SCHEMA_VERSION = 1
VECTORS_KEY = "reference_vectors"
EMULATION_ENV = "PRIVSPLIT_EMULATED"  # set by tools/emulated_pi in the guest: timings there are not Pi latency


class AcceptanceError(PrivsplitError):
    """The device computed other int8 wire features than the bundle's reference vectors."""

    exit_code = 9


class AcceptanceStatus(str, Enum):
    PASSED = "passed"  # every checked encoder reproduced its reference bit for bit
    FAILED = "failed"  # at least one encoder differs
    NO_VECTORS = "no-vectors"  # the bundle has no reference vectors (exported by an older privsplit)
    NO_RUNTIME = "no-runtime"  # no shipped encoder with vectors can run here


@dataclass(frozen=True)
class EncoderCheck:
    encoder: str
    runtime: str | None  # None: not checked (no runtime installed for it)
    values: int = 0
    mismatched: int = 0
    max_diff_steps: int = 0
    note: str = ""

    @property
    def checked(self) -> bool:
        return self.runtime is not None


@dataclass(frozen=True)
class AcceptanceResult:
    bundle: str
    version: str
    status: AcceptanceStatus
    machine: dict = field(default_factory=dict)
    checks: tuple[EncoderCheck, ...] = ()
    inputs: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True unless the check ran and found different bits (no vectors / no runtime: nothing to refuse)."""
        return self.status is not AcceptanceStatus.FAILED

    @property
    def mismatched(self) -> int:
        return sum(c.mismatched for c in self.checks)

    @property
    def max_diff_steps(self) -> int:
        return max((c.max_diff_steps for c in self.checks), default=0)

    def summary(self) -> str:
        where = f"{self.machine.get('machine', '?')} {self.machine.get('cpu', '')}".strip()
        if self.status is AcceptanceStatus.NO_VECTORS:
            return (
                f"{self.version}: no reference vectors in the bundle (exported by an older privsplit): "
                "no on-device check was possible; re-export to ship them"
            )
        if self.status is AcceptanceStatus.NO_RUNTIME:
            return f"{self.version}: no installed runtime runs an encoder with reference vectors: not checked"
        parts = []
        for c in self.checks:
            if not c.checked:
                parts.append(f"{c.encoder}: not checked ({c.note})")
            elif c.mismatched:
                parts.append(
                    f"{c.encoder} ({c.runtime}): {c.mismatched} of {c.values} int8 values differ, "
                    f"largest by {c.max_diff_steps} step(s)"
                )
            else:
                parts.append(f"{c.encoder} ({c.runtime}): {c.values} values identical")
        verdict = "passed" if self.status is AcceptanceStatus.PASSED else "FAILED"
        return f"acceptance check {verdict} on {where} ({self.inputs} inputs): " + "; ".join(parts)

    def to_json(self) -> dict:
        return {"schema_version": ACCEPTANCE_SCHEMA_VERSION, **to_dict(self), "seconds": round(self.seconds, 3)}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "acceptance result") -> AcceptanceResult:
        hint = "run `privsplit edge selftest BUNDLE --json` with the same privsplit version"
        return from_dict(cls, check_schema(data, version=ACCEPTANCE_SCHEMA_VERSION, source=source, hint=hint))


def cpu_model() -> str:
    """The CPU as the OS describes it: x86 ``model name``, or ARM ``CPU implementer/part`` (e.g. 0x41/0xd08)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    if "model name" in fields:
        return fields["model name"]
    if "CPU part" in fields:
        part = fields["CPU part"]
        name = _ARM_PARTS.get((fields.get("CPU implementer", ""), part))
        detail = f"(implementer {fields.get('CPU implementer', '?')}, part {part})"
        return f"{name} {detail}" if name else detail
    return fields.get("Hardware", platform.processor() or "unknown")


_ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1",
}


def machine_record() -> dict:
    """What ran it: architecture, CPU model, and the emulator when tools/emulated_pi says so."""
    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "emulated": os.environ.get(EMULATION_ENV) or None,
    }


def _check_encoder(bundle: Bundle, name: str, pixels: np.ndarray, expected: np.ndarray) -> EncoderCheck:
    from privsplit.edge.pipeline import EdgePipeline

    try:
        pipe = EdgePipeline.open(bundle, encoder=name, noise=False)
    except MissingDependencyError as exc:
        return EncoderCheck(name, None, note=str(exc).split(":")[0])
    try:
        got = pipe.encode_pixels(pixels).data
    finally:
        pipe.close()
    if got.shape != expected.shape:
        raise BundleError(
            f"{name}: wire features of shape {list(got.shape)}, the reference vectors hold {list(expected.shape)}"
        )
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    return EncoderCheck(name, pipe.runtime.name.value, int(diff.size), int((diff > 0).sum()), int(diff.max(initial=0)))


def check_bundle(path: str | Path | Bundle, *, trust_key=None) -> AcceptanceResult:
    """Verify the edge bundle (signature first, with ``trust_key``), then run its reference vectors."""
    started = time.perf_counter()
    bundle = path if isinstance(path, Bundle) else load_bundle(path, trust_key=trust_key, kind=BundleKind.EDGE)
    entry = bundle.manifest.get(VECTORS_KEY)
    machine = machine_record()
    if not entry:
        return AcceptanceResult(str(bundle.root), bundle.version, AcceptanceStatus.NO_VECTORS, machine)
    try:
        with np.load(bundle.file(str(entry["file"])), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(
            f"{bundle.root}: the reference vectors cannot be read ({exc}); re-export the bundle"
        ) from None
    pixels = arrays.get("pixels")
    if pixels is None or pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise BundleError(f"{bundle.root}: the reference vectors hold no uint8 (N, H, W, C) pixels; re-export")
    checks = []
    for name in entry.get("encoders", []):
        if name not in bundle.manifest["encoders"] or f"wire/{name}" not in arrays:
            raise BundleError(f"{bundle.root}: reference vectors for {name!r}, which the bundle does not ship")
        checks.append(_check_encoder(bundle, name, pixels, arrays[f"wire/{name}"]))
    ran = [c for c in checks if c.checked]
    status = (
        AcceptanceStatus.NO_RUNTIME
        if not ran
        else AcceptanceStatus.FAILED
        if any(c.mismatched for c in ran)
        else AcceptanceStatus.PASSED
    )
    return AcceptanceResult(
        str(bundle.root),
        bundle.version,
        status,
        machine,
        tuple(checks),
        int(len(pixels)),
        time.perf_counter() - started,
    )


def device_check(target, release: str, *, new_root_pem: str | None = None, allow_unsigned: bool = False):
    """The acceptance check of the release folder ``release`` *on the device* of a flash target: in this
    process for a local folder, else ``privsplit edge selftest RELEASE --json`` over ssh with the device's
    own Python. Returns (verdict line, ok); ok is False only when the check ran and found other bits.

    Called by a flash once it verified the signature on the host and every hash on the device; the device
    verifies again by the trust state the flash is installing, then runs the vectors: its own trust root, or,
    on a device without one, ``new_root_pem`` (the root this flash installs with --trust-key, sent over
    the ssh session's stdin); ``allow_unsigned`` only for a flash --allow-unsigned."""
    from privsplit.edge.flash import FlashError, LocalTarget

    if isinstance(target, LocalTarget):
        from privsplit.bundle import public_key_from_pem
        from privsplit.edge.trust import load_device_bundle

        key = None if new_root_pem is None else public_key_from_pem(new_root_pem, where="the flash's trust key")
        result = check_bundle(load_device_bundle(release, trust_key=key, allow_unsigned=allow_unsigned))
        return result.summary(), result.ok
    selftest = f"privsplit edge selftest {shlex.quote(release)} --json"
    if allow_unsigned:
        remote = f"{selftest} --allow-unsigned"
    elif new_root_pem is not None:  # the key file exists only while the check runs
        remote = f'k=$(mktemp) && cat > "$k" && {{ {selftest} --trust-key "$k"; rc=$?; rm -f "$k"; exit $rc; }}'
    else:
        remote = selftest
    cmd = ["ssh", *target._common("-p"), target.destination, remote]
    try:
        proc = subprocess.run(cmd, input=new_root_pem or "", capture_output=True, text=True, timeout=target.timeout_s)
    except subprocess.TimeoutExpired:
        raise FlashError(
            f"{target}: the on-device acceptance check did not finish within {target.timeout_s:g} s; "
            "the active release is unchanged"
        ) from None
    tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
    if proc.returncode == 127:
        return (
            "no on-device check was possible: `privsplit` is not on the device's PATH "
            "(pip install 'privsplit[edge]' there to check every release before it goes live)",
            True,
        )
    if proc.returncode == 255:
        raise FlashError(f"cannot run the acceptance check on {target} over ssh: {tail}")
    try:
        result = AcceptanceResult.from_json(json.loads(proc.stdout), source=f"{target} selftest")
    except (ValueError, PrivsplitError):
        if proc.returncode == 2 and "invalid choice" in proc.stderr:
            return "no on-device check was possible: the device's privsplit has no `edge selftest` (upgrade it)", True
        raise FlashError(
            f"{target}: the on-device acceptance check did not run ({tail or f'exit status {proc.returncode}'}); "
            "the active release is unchanged"
        ) from None
    return result.summary(), result.ok
