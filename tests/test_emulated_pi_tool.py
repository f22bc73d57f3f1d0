"""tools/emulated_pi's failures are one line naming the step and the cause, never a traceback or a hang: an image
build that cannot reach its mirror, a guest that does not boot, a cache without an image. Fast (no emulation)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from test_emulated_pi_support import TOOL


def _tool(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _one_line(proc, *needles):
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert err and err[-1].startswith("emulated-pi: ") or "no image" in err[-1]
    for needle in needles:
        assert needle in err[-1], err[-1]


@pytest.mark.skipif(
    shutil.which("debootstrap") is None and not os.path.exists("/usr/sbin/debootstrap"),
    reason="debootstrap not installed (.ci/run installs it)",
)
@pytest.mark.skipif(os.geteuid() != 0, reason="the image build needs root")
def test_a_build_that_cannot_reach_its_mirror_fails_in_one_line(tmp_path):
    proc = _tool("build", env={"PRIVSPLIT_PI_CACHE": str(tmp_path), "PRIVSPLIT_PI_MIRROR": "http://127.0.0.1:9/debian"})
    _one_line(proc, "debootstrap", "Failed getting release file")
    # the partial build is gone, its log kept (and the shared download folder, empty)
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "debs"]
    assert any(p.name.endswith(".failed-build.log") for p in tmp_path.iterdir())


def test_status_and_boot_without_an_image_say_so(tmp_path):
    env = {"PRIVSPLIT_PI_CACHE": str(tmp_path)}
    status = _tool("status", env=env)
    assert status.returncode == 1 and "python tools/emulated_pi build" in status.stderr
    boot = _tool("boot", env=env)
    _one_line(boot, "boot", "python tools/emulated_pi build")


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="qemu-system-arm not installed")
def test_a_guest_that_does_not_boot_fails_in_one_line_within_its_deadline(tmp_path):
    sys.path.insert(0, str(TOOL))
    from image import Image, PiError
    from vm import EmulatedPi

    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("root.img", "vmlinuz", "initrd.img", "id_ed25519", "ready.json"):
        (folder / name).write_bytes(b"not a kernel\n")
    (folder / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA test\n")
    started = time.monotonic()
    with pytest.raises(PiError) as info:
        EmulatedPi(Image(folder), workdir=tmp_path / "vm", boot_timeout=15).start()
    text = str(info.value)
    assert text.startswith("emulated-pi: boot: ") and "\n" not in text
    assert time.monotonic() - started < 60
