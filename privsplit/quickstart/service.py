"""``privsplit serve`` as a child process: started on a free loopback port, stopped with SIGTERM.

The quickstart runs the cloud service exactly as a user would (its own process, its own
interpreter), so the device-side measurements cross a real socket and the stop is the documented
drain, not a thread shutdown inside the measuring process.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from privsplit.errors import RunError

_LISTENING = re.compile(r"listening on (\S+):(\d+)")


class ServiceProcess:
    """A running ``privsplit serve BUNDLE --host 127.0.0.1 --port 0``; a context manager."""

    def __init__(self, bundle: str | Path, *, extra_args: tuple[str, ...] = (), start_timeout_s: float = 120.0) -> None:
        self.args = [
            sys.executable,
            "-m",
            "privsplit.cli.main",
            "serve",
            str(bundle),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *extra_args,
        ]
        self.start_timeout_s = start_timeout_s
        self.lines: list[str] = []
        self.port: int | None = None
        self.exit_code: int | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def target(self) -> str:
        if self.port is None:
            raise RunError("the service is not running")
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    def start(self) -> ServiceProcess:
        self._proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, name="privsplit-serve-log", daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        while self.port is None:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = ""
            if line is None or left <= 0:
                self.kill()
                why = "exited" if line is None else f"did not report its address within {self.start_timeout_s:g} s"
                tail = "\n".join(self.lines[-5:]) or "(no output)"
                raise RunError(f"the cloud service {why}: {tail}")
            found = _LISTENING.search(line)
            if found:
                self.port = int(found.group(2))
        return self

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM, wait for the drain; returns the exit code (0 = clean). Kills it after ``grace_s + 10`` s."""
        if self._proc is None or self.exit_code is not None:
            return self.exit_code if self.exit_code is not None else 0
        self._proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self._proc.wait(timeout=grace_s + 10)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RunError(f"the cloud service did not stop within {grace_s + 10:g} s of SIGTERM; killed it") from None
        return self.exit_code

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        if self._proc is not None:
            self.exit_code = self._proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start() if self.port is None else self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self.kill()
        elif self.exit_code is None:
            self.stop()
