"""Helpers of the emulated-Pi tests (no tests here): the gate, the image, the project's wheel, a qemu-user root.

The gate: ``PRIVSPLIT_EMULATED_PI=1`` (``.ci/run`` sets it after building or reusing the image). Without it the
ARM tests skip with the reason; with it a missing or broken image FAILS them (never a silent skip).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "emulated_pi"
GATE = "PRIVSPLIT_EMULATED_PI"
WHEEL_ENV = "PRIVSPLIT_PI_WHEEL"  # the project's wheel, built by .ci/run (else built here, which needs the index)

if str(TOOL) not in sys.path:
    sys.path.insert(0, str(TOOL))

# An ARM /proc/cpuinfo (Cortex-A72, the Pi 4's core, part 0xd08): the runtimes' CPU detection (the `cpuinfo`
# library) reads it; under qemu-user the host's x86 file makes LiteRT and onnxruntime crash.
ARM_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    for i in range(4)
)


GATE_REASON = (
    f"emulated Raspberry Pi tests run when {GATE}=1 (.ci/run sets it after `python tools/emulated_pi build`; "
    "needs qemu-system-arm, qemu-user-static, debootstrap, root)"
)
gated = pytest.mark.skipif(not os.environ.get(GATE), reason=GATE_REASON)


def require_image():
    """The built image, or skip (gate unset) / FAIL (gate set, image missing or broken)."""
    import image as pi_image

    if not os.environ.get(GATE):
        pytest.skip(GATE_REASON)
    found = pi_image.find_image()
    if found is None:
        pytest.fail(
            f"{GATE} is set but there is no emulated-Pi image at {pi_image.image_folder()}: "
            "run `python tools/emulated_pi build`"
        )
    try:
        found.check()
    except pi_image.PiError as exc:
        pytest.fail(str(exc))
    return found


def require_user_root() -> Path:
    """The qemu-user root (``python tools/emulated_pi build`` makes it first), or skip / FAIL like require_image."""
    import image as pi_image

    if not os.environ.get(GATE):
        pytest.skip(GATE_REASON)
    found = pi_image.find_user_root()
    if found is None:
        pytest.fail(
            f"{GATE} is set but there is no qemu-user root at {pi_image.user_root_folder()}: "
            "run `python tools/emulated_pi build`"
        )
    return found


def project_wheel(tmp: Path) -> Path:
    """The project's own wheel (what a user pip-installs on the Pi)."""
    given = os.environ.get(WHEEL_ENV)
    if given:
        path = Path(given)
        if not path.is_file():
            pytest.fail(f"{WHEEL_ENV}={given}: no such wheel")
        return path
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wheels = sorted(tmp.glob("privsplit-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.fail(f"building the project's wheel failed: {proc.stderr.strip()[-300:]}")
    return wheels[-1]
