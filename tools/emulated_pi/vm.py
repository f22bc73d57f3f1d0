"""Boot a built image under qemu-system-aarch64 with a pinned CPU model and reach it over SSH.

``with EmulatedPi(image, cpu="cortex-a72") as pi:`` boots (``-snapshot``: the image is never written, every
boot starts clean), waits until an authenticated ssh connection is up and gives ``pi.ssh(cmd)``,
``pi.put(src, dest)`` and the ``ssh://`` URL, identity and known_hosts file ``privsplit flash`` needs. In the
guest the host's loopback services are at 10.0.2.2 (qemu user networking), and every ssh session has
``PRIVSPLIT_EMULATED`` set.
Pi 4 = ``cortex-a72``, Pi 5 = ``cortex-a76``. Every wait has a deadline; failures are one-line PiErrors.

Under TCG an ssh handshake costs the guest seconds (sshd re-executes itself, key exchange, signature), so one
connection is opened once the console says sshd is up and every later ssh/scp rides on it (OpenSSH connection
sharing: ``ControlPath``; ``mux_options`` hands the same to ``privsplit flash --ssh-option``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from image import Image, PiError

CPU_MODELS = {"pi4": "cortex-a72", "pi5": "cortex-a76"}
HOST_FROM_GUEST = "10.0.2.2"
SSHD_UP = "privsplit-pi: sshd up"  # the image's init prints it on the console once sshd runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmulatedPi:
    def __init__(
        self,
        image: Image,
        *,
        cpu: str = "cortex-a72",
        smp: int = 2,
        memory_mb: int = 2048,
        workdir: Path,
        boot_timeout: float = 180.0,
    ) -> None:
        image.check()
        self.image, self.cpu, self.smp, self.memory_mb = image, CPU_MODELS.get(cpu, cpu), smp, memory_mb
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.boot_timeout = boot_timeout
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.console = self.workdir / f"console-{self.cpu}.log"
        self.known_hosts = self.workdir / "known_hosts"
        self.identity = self.workdir / "id_ed25519"
        self.boot_seconds = 0.0
        # the shared connection's socket: a short path of its own (a unix socket path holds at most ~104 bytes)
        self._mux_dir = Path(tempfile.mkdtemp(prefix="pi-ssh-"))
        self.control_path = self._mux_dir / "mux"

    # ---- lifecycle ------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        img = self.image
        return [
            "qemu-system-aarch64",
            "-M", "virt", "-cpu", self.cpu, "-smp", str(self.smp), "-m", str(self.memory_mb),
            "-nographic", "-no-reboot", "-monitor", "none", "-serial", f"file:{self.console}",
            "-kernel", str(img.kernel), "-initrd", str(img.initrd),
            "-append", f"root=/dev/vda rw console=ttyAMA0 init=/sbin/privsplit-init privsplit.cpu={self.cpu} quiet",
            "-drive", f"file={img.disk},format=raw,if=none,id=hd,snapshot=on,cache=unsafe",  # throwaway: no flush
            "-device", "virtio-blk-device,drive=hd",
            "-netdev", f"user,id=n,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-device,netdev=n",
        ]  # fmt: skip

    def start(self) -> EmulatedPi:
        started = time.monotonic()
        self.port = free_port()
        # ssh refuses a private key others can read: a copy with mode 0600 in the work folder
        self.identity.write_bytes(self.image.key.read_bytes())
        self.identity.chmod(0o600)
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.image.host_key}\n")
        try:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            shutil.rmtree(self._mux_dir, ignore_errors=True)
            raise PiError("boot", "qemu-system-aarch64 not found (apt-get install qemu-system-arm)") from None
        try:
            self._wait_for_sshd(started + self.boot_timeout)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def cpu_seconds(self) -> float:
        """CPU time the emulator has used so far (user + system, all its threads): what the guest's work costs
        apart from waiting for a shared host's cores (0.0 where /proc does not tell)."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)

    def _wait_for_sshd(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else "").strip()
                raise PiError("boot", f"qemu exited {self.proc.returncode}: {err or self._console_tail()}")
            # the forwarded port accepts before sshd runs: wait for the console's word (costs the guest nothing),
            # then only a real authenticated connection proves the guest is up
            if self._sshd_announced() and self._open_master():
                return
            if time.monotonic() > deadline:
                raise PiError("boot", f"no ssh answer within {self.boot_timeout:g} s (console: {self._console_tail()})")
            time.sleep(0.5)

    def _sshd_announced(self) -> bool:
        try:
            return SSHD_UP in self.console.read_text(errors="replace")
        except OSError:
            return False

    def _open_master(self) -> bool:
        """Open the shared connection (``ssh -M -f -N``: authenticates, then waits in the background)."""
        cmd = [*self.ssh_base(connect_timeout=10)]
        cmd[1:1] = ["-M", "-f", "-N", "-o", "ControlPersist=yes"]
        try:
            # the background master keeps no pipe of ours open: its output goes to /dev/null
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and self._master_alive()

    def _master_alive(self) -> bool:
        check = [*self.ssh_base()]
        check[1:1] = ["-O", "check"]
        proc = subprocess.run(check, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        return proc.returncode == 0

    def _close_master(self) -> None:
        close = [*self.ssh_base()]
        close[1:1] = ["-O", "exit"]
        try:
            subprocess.run(close, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self._mux_dir, ignore_errors=True)

    def _console_tail(self) -> str:
        try:
            lines = [ln for ln in self.console.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no console output"
        return " | ".join(lines[-3:]) or "no console output"

    def stop(self) -> None:
        try:
            self._power_off()
        finally:
            self._close_master()

    def _power_off(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if not self.boot_seconds:  # never answered: nothing to power off cleanly
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            return
        try:
            subprocess.run(
                [*self.ssh_base(connect_timeout=3), "echo o > /proc/sysrq-trigger"],
                capture_output=True,
                timeout=10,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> EmulatedPi:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- access -----------------------------------------------------------------------------------------
    @property
    def mux_options(self) -> list[str]:
        """``-o`` values that make an ssh/scp ride on the shared connection (it connects on its own without one)."""
        return [f"ControlPath={self.control_path}"]

    @property
    def ssh_options(self) -> list[str]:
        return [
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "LogLevel=ERROR", "-i", str(self.identity),
            *(arg for opt in self.mux_options for arg in ("-o", opt)),
        ]  # fmt: skip

    def ssh_base(self, *, connect_timeout: int = 15) -> list[str]:
        return ["ssh", *self.ssh_options, "-o", f"ConnectTimeout={connect_timeout}", "-p", str(self.port),
                "root@127.0.0.1"]  # fmt: skip

    def url(self, path: str) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{path}"

    def ssh(self, command: str, *, timeout: float = 300.0, step: str = "ssh", check: bool = True):
        """Run ``command`` in the guest (a login-less shell); PiError naming ``step`` on failure or timeout."""
        try:
            proc = subprocess.run(
                [*self.ssh_base(), command], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise PiError(step, f"`{command[:80]}` did not finish within {timeout:g} s in the guest") from None
        if check and proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            raise PiError(step, f"`{command[:80]}` exited {proc.returncode}: {' | '.join(lines[-3:])}")
        return proc

    def put(self, sources: list[Path], dest: str, *, timeout: float = 300.0) -> None:
        cmd = ["scp", "-q", "-r", *self.ssh_options, "-P", str(self.port), *map(str, sources), f"root@127.0.0.1:{dest}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PiError("scp", f"copying to the guest did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            raise PiError("scp", f"scp exited {proc.returncode}: {proc.stderr.strip()[-300:]}")

    def get(self, source: str, dest: Path, *, timeout: float = 120.0) -> None:
        cmd = ["scp", "-q", *self.ssh_options, "-P", str(self.port), f"root@127.0.0.1:{source}", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise PiError("scp", f"scp from the guest exited {proc.returncode}: {proc.stderr.strip()[-300:]}")


def install_privsplit(pi: EmulatedPi, wheel: Path) -> tuple[float, list[str]]:
    """``pip install privsplit[edge]`` in the guest, offline, from the project's wheel and the image's aarch64
    wheels, into the image's venv (/opt/privsplit), whose dependencies the image's edge layer preinstalled from
    the same wheels: pip resolves every requirement, finds the dependencies satisfied and installs the project's
    wheel. The guest's system pip runs with the venv's Python, as ``pip --python VENV`` would after a start-up of
    its own. ``--no-compile``: a module is compiled when first imported. ``privsplit`` goes on the PATH of ssh
    sessions. Returns the seconds it took and the names pip installed (from its ``--report``)."""
    from image import EDGE_VENV, GUEST_WHEELS, PIP_RUNNER

    started = time.monotonic()
    pi.put([wheel], "/tmp/")
    report = pi.ssh(
        f"{EDGE_VENV}/bin/python {PIP_RUNNER} install --quiet --disable-pip-version-check --no-compile --no-index "
        f"--find-links {GUEST_WHEELS} --find-links /tmp --report /tmp/pip-report.json "
        f"{shlex.quote(f'privsplit[edge] @ file:///tmp/{wheel.name}')} "
        f"&& ln -sf {EDGE_VENV}/bin/privsplit /usr/local/bin/privsplit && cat /tmp/pip-report.json",
        timeout=600,
        step="pip install privsplit[edge] in the guest",
    ).stdout
    installed = [item["metadata"]["name"] for item in json.loads(report)["install"]]
    return time.monotonic() - started, installed
