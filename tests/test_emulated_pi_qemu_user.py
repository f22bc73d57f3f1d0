"""The acceptance check catches the real case: under qemu-user with its default CPU model (``max``, SME visible
to user space) LiteRT's XNNPACK gives wrong INT8 features, and the selftest must refuse; with the CPU pinned to a
Pi 4's (``QEMU_CPU=cortex-a72``) it must accept. A flash refused on ``max`` leaves the previous release active.

Runs an arm64 Debian tree (tools/emulated_pi: debootstrap, unpacked on the host) in a chroot under
qemu-user (no VM boot; an ARM /proc/cpuinfo and /sys cpu files
in place), with privsplit[edge] installed there offline from aarch64 wheels. Gate: see test_emulated_pi_support.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from test_edge_support import rewrite_bundle
from test_emulated_pi_support import ARM_CPUINFO, gated, project_wheel, require_user_root

pytestmark = [pytest.mark.slow, gated]  # gated: skips before any training when the gate is unset


@pytest.fixture(scope="session")
def user_root():
    return require_user_root()  # session scope, listed first: a missing root fails before minutes of training


@pytest.fixture(scope="module")
def arm_root(user_root, tmp_path_factory):
    import qemu_user

    root = qemu_user.prepare_root(user_root, ARM_CPUINFO)
    qemu_user.install(root, project_wheel(tmp_path_factory.mktemp("wheel")))
    yield root
    qemu_user.unmount(root)


def _selftest(root, bundle, cpu):
    import qemu_user

    return qemu_user.chroot(
        root,
        ["privsplit", "edge", "selftest", bundle, "--json", "--trust-key", "/tmp/signer.pub"],
        cpu=cpu,
        timeout=600,
        step="selftest",
    )


def test_selftest_refuses_qemu_user_max_and_accepts_a_pinned_cortex_a72(user_root, arm_root, bundles, tmp_path):
    import qemu_user

    inside = arm_root / "tmp" / "digits-edge"
    shutil.rmtree(inside, ignore_errors=True)
    shutil.copytree(bundles.edge, inside)
    shutil.copy(bundles.trust_key, arm_root / "tmp" / "signer.pub")  # the signature first, then the vectors

    pinned = _selftest(arm_root, "/tmp/digits-edge", "cortex-a72")
    assert pinned.returncode == 0, pinned.stderr
    ok = json.loads(pinned.stdout)
    assert ok["status"] == "passed" and ok["machine"]["machine"] == "aarch64"
    assert "Cortex-A72" in ok["machine"]["cpu"]
    assert {c["encoder"]: c["mismatched"] for c in ok["checks"]} == {"tflite-int8": 0, "onnx-fp32": 0}
    assert {c["encoder"]: c["runtime"] for c in ok["checks"]} == {"tflite-int8": "litert", "onnx-fp32": "onnxruntime"}

    wrong = _selftest(arm_root, "/tmp/digits-edge", None)  # qemu-user's default CPU model: max
    assert wrong.returncode == 9, wrong.stderr
    bad = json.loads(wrong.stdout)
    checks = {c["encoder"]: c for c in bad["checks"]}
    assert bad["status"] == "failed"
    # measured: LiteRT's int8 kernels picked for SME give wrong values; onnxruntime stays exact
    assert checks["tflite-int8"]["mismatched"] > checks["tflite-int8"]["values"] // 2
    assert checks["tflite-int8"]["max_diff_steps"] > 1 and checks["onnx-fp32"]["mismatched"] == 0
    err = wrong.stderr.strip().splitlines()
    assert len(err) == 1 and f"{checks['tflite-int8']['mismatched']} of" in err[0] and "largest by" in err[0]

    # flash on the device itself (a local target in the chroot): accepted on cortex-a72, refused on max
    v2 = rewrite_bundle(
        bundles.edge, arm_root / "tmp" / "digits-v2", version="v2", sign_key=bundles.trust_key.with_suffix(".key")
    )
    device = arm_root / "tmp" / "device"
    shutil.rmtree(device, ignore_errors=True)
    flash_first = ["privsplit", "flash", "/tmp/digits-edge", "--to", "/tmp/device", "--trust-key", "/tmp/signer.pub"]
    first = qemu_user.chroot(arm_root, flash_first, cpu="cortex-a72", timeout=600, step="flash")
    assert first.returncode == 0 and "acceptance check passed" in first.stdout, first.stderr
    previous = os.readlink(device / "current")
    refused = qemu_user.chroot(
        arm_root, ["privsplit", "flash", f"/tmp/{v2.name}", "--to", "/tmp/device"], cpu=None, timeout=600, step="flash"
    )
    assert refused.returncode == 8 and "refused, the active release is unchanged" in refused.stderr
    assert "largest by" in refused.stderr and os.readlink(device / "current") == previous
    assert not (device / "releases" / "v2").exists()
