"""Check that a Raspberry Pi (64-bit OS, aarch64) can install ``privsplit[edge]`` from wheels alone.

For each CPython in PYTHONS, pip resolves the base install and the ``edge`` extra (read from pyproject.toml)
with all their dependencies, wheels only (``--only-binary=:all:``), for manylinux aarch64 up to glibc
TARGET_GLIBC (Raspberry Pi OS Bullseye; Bookworm has 2.36). The resolve is ``pip install --dry-run --report``
with ``--platform``/``--python-version``/``--implementation``: the same wheel selection as ``pip download``,
but it reads only each wheel's metadata (measured: ~30 s a Python, where ``pip download`` of every
wheel took 5.5 min for three). Needs the package index (network). Exit status 1 names the Python and pip's error.

Usage: python .ci/check_arm_wheels.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip itself uses
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.11", "3.12", "3.13")
TARGET_GLIBC = (2, 31)
# pip does not widen an explicit --platform to older manylinux versions: list every one the target runs
PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, TARGET_GLIBC[1] + 1)))


def edge_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The base dependencies plus the ``edge`` extra: what ``pip install privsplit[edge]`` asks for."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["edge"]]
    nested = [r for r in reqs if r.startswith(project["name"])]
    if nested:
        raise SystemExit(f"check_arm_wheels: the edge extra refers to {nested}; list its requirements directly")
    return reqs


def resolve(reqs: list[str], python: str, report: Path) -> subprocess.CompletedProcess:
    """``pip install --dry-run`` of ``reqs`` for a Pi running CPython ``python``; writes pip's JSON ``report``."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--dry-run"]
    cmd += ["--ignore-installed", "--only-binary=:all:", "--report", str(report)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += ["--python-version", python, "--implementation", "cp", "--target", str(report.parent / "target")]
    return subprocess.run([*cmd, *reqs], capture_output=True, text=True)


def _reason(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
    return " ".join(lines) if lines else (proc.stderr.strip().splitlines() or ["pip failed"])[-1]


def main() -> int:
    reqs = edge_requirements()
    failures: list[str] = []
    started = time.monotonic()
    for python in PYTHONS:
        with tempfile.TemporaryDirectory(prefix="arm-wheels-") as tmp:
            report = Path(tmp) / "report.json"
            t = time.monotonic()
            proc = resolve(reqs, python, report)
            if proc.returncode != 0:
                failures.append(f"CPython {python}: {_reason(proc)}")
                print(f"FAIL cp{python}: {_reason(proc)}")
                continue
            installs = json.loads(report.read_text())["install"]
            wheels = [item["download_info"]["url"].rsplit("/", 1)[-1] for item in installs]
            print(f"ok   cp{python} ({time.monotonic() - t:.0f} s): {len(wheels)} wheels")
            for wheel in sorted(wheels):
                print(f"       {wheel}")
    took = time.monotonic() - started
    if failures:
        print(
            f"check_arm_wheels: a Raspberry Pi (aarch64, glibc {TARGET_GLIBC[0]}.{TARGET_GLIBC[1]}) could not install "
            f"privsplit[edge] ({took:.0f} s). Relax or change the pin pip names:",
            file=sys.stderr,
        )
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    pythons = ", ".join(PYTHONS)
    print(f"check_arm_wheels: privsplit[edge] installs from aarch64 wheels on CPython {pythons} ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
