"""Shared helpers of the edge and flash tests (no tests here): rewritten copies of the conftest's session
``bundles`` (new version, unsigned, written with the export's own bundle writer), a real sshd, image files.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SSHD = Path("/usr/sbin/sshd")


def rewrite_bundle(src: Path, dest: Path, *, version: str, sign_key: Path | None = None, **changes) -> Path:
    """Copy the edge bundle ``src`` to ``dest`` with a new version (and manifest keys), unsigned, or signed with
    the private key file ``sign_key``."""
    from privsplit.bundle import BundleKind, load_bundle
    from privsplit.export.bundle_writer import write_bundle

    bundle = load_bundle(src, kind=BundleKind.EDGE)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    body = {
        k: v for k, v in bundle.manifest.items() if k not in ("schema_version", "kind", "version", "created", "files")
    }
    body.update(changes)
    key = None
    if sign_key is not None:
        from privsplit.export.signing import load_private_key

        key = load_private_key(sign_key)
    write_bundle(dest, kind=BundleKind.EDGE, version=version, body=body, sign_key=key)
    return dest


def holdout(run_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` holdout images (uint8 NHWC) and their task labels."""
    from privsplit.data import Part
    from privsplit.run import RunFolder

    run = RunFolder(run_dir)
    data, split = run.dataset(), run.split()
    idx = split[Part.HOLDOUT][:count]
    return data.images[idx], data.task_labels[idx]


def write_pngs(images: np.ndarray, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a real sshd on 127.0.0.1 ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    identity: Path  # the user's private key
    known_hosts: Path
    process: subprocess.Popen

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


def sshd_unavailable() -> str | None:
    """Why an sshd cannot be started here (None: it can)."""
    if not SSHD.is_file():
        return f"{SSHD} not found: apt-get install openssh-server (.ci/run installs it)"
    if shutil.which("ssh") is None or shutil.which("scp") is None or shutil.which("ssh-keygen") is None:
        return "the OpenSSH client (ssh, scp, ssh-keygen) is not installed"
    if os.geteuid() != 0 and not Path("/run/sshd").is_dir():
        return "sshd needs the privilege separation folder /run/sshd (create it as root, or run the tests as root)"
    return None


def start_sshd(folder: Path) -> Sshd:
    """sshd -D on a free 127.0.0.1 port with a generated host key, accepting a generated user key only."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    auth = folder / "authorized_keys"
    auth.write_text((folder / "user.pub").read_text())
    auth.chmod(0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    for _attempt in range(5):
        port = free_port()
        (folder / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host'}\nAuthorizedKeysFile {auth}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            f"PidFile {folder / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
        )
        log = open(folder / "sshd.log", "w")
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(folder / "sshd_config")], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    host_key = " ".join((folder / "host.pub").read_text().split()[:2])
                    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
                    return Sshd(
                        port=port,
                        user=getpass.getuser(),
                        identity=folder / "user",
                        known_hosts=folder / "known_hosts",
                        process=proc,
                    )
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"sshd did not start: {(folder / 'sshd.log').read_text()[-500:]}")


def stop_sshd(sshd: Sshd) -> None:
    sshd.process.terminate()
    try:
        sshd.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        sshd.process.kill()
        sshd.process.wait()
