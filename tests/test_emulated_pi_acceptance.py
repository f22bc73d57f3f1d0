"""The on-device acceptance check on this machine (x86): export ships signed reference vectors, the selftest
reproduces them bit for bit, a release whose bits differ is refused by flash (the previous one stays active),
and a bundle exported without vectors still flashes, saying no check was possible. The ARM runs (qemu-user
``max`` refused, pinned CPU models accepted, the full-system VM) are in test_emulated_pi_qemu*.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from privsplit.bundle import BundleKind, load_bundle
from privsplit.edge.acceptance import AcceptanceStatus, check_bundle
from privsplit.edge.flash import FlashError, flash

pytestmark = pytest.mark.slow  # the session's bundles (training + export, shared with the other edge tests)


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "privsplit.cli.main", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def _with_vectors(src, dest, version, edit):
    """A copy of ``src`` whose reference vectors were changed by ``edit(arrays)`` (re-listed, unsigned)."""
    from privsplit.export.bundle_writer import write_bundle

    signed = load_bundle(src, kind=BundleKind.EDGE)
    shutil.copytree(src, dest)
    path = dest / "reference_vectors.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    edit(arrays)
    np.savez_compressed(path, **arrays)
    (dest / "manifest.sig").unlink()
    generated = ("schema_version", "kind", "version", "created", "files")
    write_bundle(
        dest,
        kind=BundleKind.EDGE,
        version=version,
        body={k: v for k, v in signed.manifest.items() if k not in generated},
    )
    return dest


def test_export_ships_signed_reference_vectors_and_the_selftest_reproduces_them(bundles):
    bundle = load_bundle(bundles.edge, trust_key=bundles.trust_key, kind=BundleKind.EDGE)
    entry = bundle.manifest["reference_vectors"]
    assert entry["file"] in bundle.manifest["files"]  # listed, so the signature covers its sha256
    assert entry["encoders"] == sorted(bundle.manifest["encoders"]) and entry["tolerance_steps"] == 0
    with np.load(bundle.file(entry["file"])) as npz:
        pixels = npz["pixels"]
        c, h, w = bundle.features.shape
        assert pixels.dtype == np.uint8 and pixels.shape[0] == entry["count"] == 8
        for name in entry["encoders"]:
            assert npz[f"wire/{name}"].dtype == np.int8 and npz[f"wire/{name}"].shape == (8, c, h, w)
    result = check_bundle(bundles.edge, trust_key=bundles.trust_key)
    assert result.status is AcceptanceStatus.PASSED and result.ok
    assert [(c.encoder, c.mismatched) for c in result.checks] == [(n, 0) for n in entry["encoders"]]
    assert all(c.values == 8 * int(np.prod(bundle.features.shape)) for c in result.checks)
    assert result.machine["machine"] and result.machine["cpu"]
    proc = _cli("edge", "selftest", bundles.edge, "--trust-key", bundles.trust_key, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "passed"


def test_different_bits_are_refused_by_selftest_and_by_flash(bundles, tmp_path):
    def off_by(arrays):
        wire = arrays["wire/tflite-int8"]
        wire.flat[5] = np.int8(int(wire.flat[5]) + (3 if wire.flat[5] < 120 else -3))
        wire.flat[77] = np.int8(int(wire.flat[77]) + (1 if wire.flat[77] < 127 else -1))

    bad = _with_vectors(bundles.edge, tmp_path / "bad", "bad-bits", off_by)
    result = check_bundle(bad)
    assert result.status is AcceptanceStatus.FAILED and not result.ok
    check = {c.encoder: c for c in result.checks}
    assert (check["tflite-int8"].mismatched, check["tflite-int8"].max_diff_steps) == (2, 3)
    assert check["onnx-fp32"].mismatched == 0
    proc = _cli("edge", "selftest", bad, "--allow-unsigned")  # the edited copy is unsigned: the bits are the point
    assert proc.returncode == 9
    warning, *err = proc.stderr.strip().splitlines()  # --allow-unsigned warns on every run, then the one error line
    assert "signature is NOT checked" in warning
    assert len(err) == 1 and "2 of" in err[0] and "largest by 3 step" in err[0] and "Traceback" not in proc.stderr

    device = tmp_path / "device"
    first = flash(bundles.edge, device, trust_key=bundles.trust_key)
    assert "acceptance check passed" in first.acceptance
    with pytest.raises(FlashError, match=r"refused, the active release is unchanged.*2 of \d+ int8 values differ"):
        flash(bad, device, allow_unsigned=True)  # past the signature check, the vectors must still refuse it
    assert os.readlink(device / "current") == f"releases/{first.version}"
    assert sorted(p.name for p in (device / "releases").iterdir()) == [first.version, f"{first.version}.sha256"]
    proc = _cli("flash", bad, "--to", device, "--allow-unsigned")
    assert proc.returncode == 8 and "largest by 3 step" in proc.stderr
    assert os.readlink(device / "current") == f"releases/{first.version}"
    assert _cli("edge", "selftest", device / "current").returncode == 0


def test_a_bundle_without_vectors_still_flashes_and_says_no_check_was_possible(bundles, tmp_path):
    from privsplit.export.bundle_writer import write_bundle

    signed = load_bundle(bundles.edge, kind=BundleKind.EDGE)
    legacy = tmp_path / "legacy"  # as an older privsplit exported it: no vectors, nothing about them
    shutil.copytree(bundles.edge, legacy)
    for name in ("reference_vectors.npz", "manifest.sig"):
        (legacy / name).unlink()
    generated = ("schema_version", "kind", "version", "created", "files", "reference_vectors")
    body = {k: v for k, v in signed.manifest.items() if k not in generated}
    write_bundle(legacy, kind=BundleKind.EDGE, version="legacy", body=body)
    result = flash(legacy, tmp_path / "device", allow_unsigned=True)
    assert result.version == "legacy" and "no on-device check was possible" in result.acceptance
    assert "no on-device check was possible" in result.summary()
    proc = _cli("edge", "selftest", tmp_path / "device" / "current", "--allow-unsigned")
    assert proc.returncode == 0 and "no on-device check was possible" in proc.stdout


def test_the_device_check_of_a_flash_verifies_by_the_trust_the_flash_installs(bundles, tmp_path):
    """A flash's check runs on the device after the host's checks, and verifies the signature again first: by
    the root the flash is installing (a first flash), else by the device's own root; hashes only only for a
    flash --allow-unsigned. Another key, or none, is refused before any vector runs."""
    from privsplit.edge.acceptance import device_check
    from privsplit.edge.flash import LocalTarget
    from privsplit.edge.trust import public_pem
    from privsplit.errors import BundleError
    from privsplit.export import generate_keys

    device = tmp_path / "device"
    staged = device / "releases" / ".incoming-test"
    shutil.copytree(bundles.edge, staged)
    target = LocalTarget(device)
    verdict, ok = device_check(target, str(staged), new_root_pem=public_pem(bundles.trust_key))
    assert ok and verdict.startswith("acceptance check passed")
    other = generate_keys(tmp_path / "other")
    with pytest.raises(BundleError, match="not by the trusted key"):
        device_check(target, str(staged), new_root_pem=public_pem(other.public))
    with pytest.raises(BundleError, match="no trust/root.pub"):  # no root, none given, signatures required
        device_check(target, str(staged))
    assert device_check(target, str(staged), allow_unsigned=True)[1]

    shutil.rmtree(staged)
    flash(bundles.edge, device, trust_key=bundles.trust_key)  # installs the root, then checks by it
    staged = device / "releases" / ".incoming-next"
    shutil.copytree(bundles.edge, staged)
    assert device_check(target, str(staged))[1]  # by the device's own root now
    unsigned = device / "releases" / ".incoming-unsigned"
    shutil.copytree(bundles.edge, unsigned)
    (unsigned / "manifest.sig").unlink()
    with pytest.raises(BundleError, match="unsigned|manifest.sig"):
        device_check(target, str(unsigned))
    assert device_check(target, str(unsigned), allow_unsigned=True)[1]
