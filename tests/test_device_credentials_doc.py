"""docs/guides/device-credentials.md's walk-through, run as written: the `privsplit` commands between its
markers, in order, as real processes (the server a real `privsplit serve` over TLS). Only the places are
swapped for this machine's (bundle, key and certificate paths, port 0, loopback), and each swap must find
its word in the block, so an edited walk-through fails here instead of going stale."""

from __future__ import annotations

import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_cloud_support import make_certs
from test_edge_support import holdout, write_pngs

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "device-credentials.md"
BEGIN, END = "<!-- device-credentials-walkthrough:begin -->", "<!-- device-credentials-walkthrough:end -->"
REVOKE_WITHIN_S = 5.0


def walkthrough() -> list[list[str]]:
    text = PAGE.read_text()
    assert BEGIN in text and END in text, f"{PAGE.name} lost its walk-through markers"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith("privsplit ")]
    assert [c[1] for c in commands] == ["devices", "devices", "serve", "edge", "devices", "devices"], commands
    return commands


def _swap(argv: list[str], swaps: dict[str, str]) -> list[str]:
    missing = sorted(set(swaps) - set(argv))
    assert not missing, f"the walk-through no longer has {missing} in: {shlex.join(argv)}"
    return [swaps.get(word, word) for word in argv]


def _cli(argv: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "privsplit.cli.main", *argv[1:]], cwd=cwd, capture_output=True, text=True, **kw
    )


def test_device_credentials_walkthrough_works_as_written(bundles, tmp_path):
    add1, add2, serve, infer, revoke, listing = walkthrough()
    work = tmp_path / "host"
    work.mkdir()
    for argv in (add1, add2):
        proc = _cli(argv, work, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert (work / "cam-01.token").stat().st_mode & 0o777 == 0o600
    assert len((work / "devices.txt").read_text().splitlines()) == 2

    certs = make_certs(tmp_path / "certs")  # a server certificate for 127.0.0.1 / localhost
    serve_argv = _swap(
        serve,
        {
            "bundles/celeba/cloud": str(bundles.cloud),
            "keys/release.pub": str(bundles.trust_key),
            "0.0.0.0": "127.0.0.1",
            "8001": "0",
            "server.crt": str(certs.server_cert),
            "server.key": str(certs.server_key),
        },
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "privsplit.cli.main", *serve_argv[1:]],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.SimpleQueue = queue.SimpleQueue()
    log: list[str] = []

    def read() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            log.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        port = None
        while port is None:
            line = lines.get(timeout=120)  # a hang guard for the start (model load)
            assert line is not None, "".join(log)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+) \(TLS, auth by 2 device tokens, 20 requests/s", line)
            port = None if found is None else int(found.group(1))
        photo = write_pngs(holdout(bundles.run, 1)[0], tmp_path / "img")[0]
        infer_argv = _swap(
            infer,
            {
                "bundles/celeba/edge": str(bundles.edge),
                "keys/release.pub": str(bundles.trust_key),
                "cloud.example:8001": f"127.0.0.1:{port}",
                "ca.crt": str(certs.ca),
                "photo.jpg": str(photo),
            },
        )
        device = tmp_path / "device"
        device.mkdir()
        (device / "cam-01.token").write_text((work / "cam-01.token").read_text())  # copied to the device
        ok = _cli(infer_argv, device, timeout=120)
        assert ok.returncode == 0, ok.stderr

        proc = _cli(revoke, work, timeout=120)
        assert proc.returncode == 0 and "revoked" in proc.stderr, proc.stderr
        revoked_at = time.monotonic()
        while True:
            refused = _cli(infer_argv, device, timeout=120)
            if refused.returncode != 0 or time.monotonic() - revoked_at > REVOKE_WITHIN_S:
                break
        assert refused.returncode != 0, "cam-01 was still served after its revocation"
        assert "device 'cam-01' was revoked" in refused.stdout + refused.stderr
        proc = _cli(listing, work, timeout=120)
        assert proc.returncode == 0 and proc.stdout.split() == ["cam-02"]
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0, "".join(log)
    assert any("device tokens reloaded" in line and "revoked: cam-01" in line for line in log), "".join(log)
