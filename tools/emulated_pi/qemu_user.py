"""An arm64 root (image.build_user_root) under qemu-user, no VM boot: fast ARM runs in a chroot, CPU model chosen.

qemu-user emulates one process on the host kernel, so the guest reads the host's ``/proc`` and ``/sys``. The
root prepared here has plain files in their place, as ../shared/docs/toolchain.md measured: an ARM
``/proc/cpuinfo`` (Cortex-A72) and ``/sys/devices/system/cpu/{possible,present,online}`` (without them the
runtimes' CPU detection fails or crashes and XNNPACK picks other kernels). ``QEMU_CPU`` picks the emulated CPU:
unset, qemu-user uses ``max`` (SME visible to user space: LiteRT's INT8 goes wrong there), ``cortex-a72``
is a Pi 4.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from image import GUEST_WHEELS, PiError

VENV = "/opt/privsplit"


def prepare_root(root: Path, cpuinfo: str) -> Path:
    """Plain files in place of the host's /proc/cpuinfo and /sys cpu lists; /tmp; /dev/null and random."""
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text(cpuinfo)
    cpu = root / "sys/devices/system/cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpu / name).write_text("0-3\n")
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (root / "dev").mkdir(exist_ok=True)
    for dev in ("null", "urandom", "random", "zero"):
        if not (root / "dev" / dev).exists():
            (root / "dev" / dev).touch()
            subprocess.run(["mount", "--bind", f"/dev/{dev}", str(root / "dev" / dev)], check=False)
    return root


def chroot(root: Path, argv: list[str], *, cpu: str | None, timeout: float, step: str) -> subprocess.CompletedProcess:
    """Run ``argv`` in ``root`` under qemu-user with CPU model ``cpu`` (None: qemu's default, ``max``)."""
    env = {"PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    if cpu is not None:
        env["QEMU_CPU"] = cpu
    try:
        return subprocess.run(
            [
                shutil.which("nice") or "/usr/bin/nice",
                "-n",
                "10",
                shutil.which("chroot") or "/usr/sbin/chroot",
                str(root),
            ]
            + argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise PiError(step, f"`{' '.join(argv)[:80]}` did not finish within {timeout:g} s under qemu-user") from None


def install(root: Path, wheel: Path) -> None:
    """``pip install privsplit[edge]`` into ``root``'s /opt/privsplit, offline (the project's wheel replaced)."""
    dest = root / "tmp" / "wheel"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy2(wheel, dest / wheel.name)
    if not (root / VENV.lstrip("/") / "bin/python").exists():
        proc = chroot(root, ["/usr/bin/python3", "-m", "venv", "--without-pip", VENV], cpu="cortex-a72", timeout=300,
                      step="venv under qemu-user")  # fmt: skip
        if proc.returncode != 0:
            raise PiError("venv under qemu-user", proc.stderr.strip()[-300:])
    pip = ["/usr/bin/python3", "-m", "pip", "--python", f"{VENV}/bin/python", "install", "--quiet", "--no-compile",
           "--no-index", "--find-links", GUEST_WHEELS, "--find-links", "/tmp/wheel"]  # fmt: skip
    # the dependencies once (kept in the root), then this checkout's wheel every time (same version number)
    for extra in (
        [f"privsplit[edge] @ file:///tmp/wheel/{wheel.name}"],
        ["--force-reinstall", "--no-deps", f"/tmp/wheel/{wheel.name}"],
    ):
        proc = chroot(root, [*pip, *extra], cpu="cortex-a72", timeout=900, step="pip install under qemu-user")
        if proc.returncode != 0:
            raise PiError("pip install under qemu-user", proc.stderr.strip()[-300:])


def unmount(root: Path) -> None:
    for dev in ("null", "urandom", "random", "zero"):
        if os.path.ismount(root / "dev" / dev):
            subprocess.run(["umount", str(root / "dev" / dev)], check=False)
