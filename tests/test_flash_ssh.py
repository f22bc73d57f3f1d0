"""Flashing over ssh:// against a real sshd on 127.0.0.1 (generated host and user keys, a free port):
install, verify on the device, switch, roll back; an scp killed mid-transfer leaves the previous
release active; unknown host keys and wrong user keys are refused with a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from test_edge_support import rewrite_bundle, sshd_unavailable, start_sshd, stop_sshd

from privsplit.bundle import BundleKind, load_bundle
from privsplit.cli.main import main
from privsplit.edge.flash import FlashAction, FlashError, flash, parse_target, rollback
from privsplit.edge.trust import load_device_bundle
from privsplit.errors import BundleError

pytestmark = [
    pytest.mark.slow,  # the session's bundles (training + export, shared with the other edge tests)
    pytest.mark.skipif(sshd_unavailable() is not None, reason=str(sshd_unavailable())),
]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop_sshd(server)


def _target(sshd, device, **kw):
    return parse_target(sshd.url(device), identity=sshd.identity, known_hosts=sshd.known_hosts, **kw)


def test_flash_and_rollback_over_ssh(bundles, sshd, tmp_path):
    device = tmp_path / "device"
    signer = bundles.trust_key.with_suffix(".key")
    v2 = rewrite_bundle(bundles.edge, tmp_path / "v2", version="v2", sign_key=signer)
    unsigned = rewrite_bundle(bundles.edge, tmp_path / "v3", version="v3")
    with pytest.raises(BundleError, match="has no trust root"):
        flash(bundles.edge, _target(sshd, device))
    first = flash(bundles.edge, _target(sshd, device), trust_key=bundles.trust_key)
    version = first.version
    assert first.action is FlashAction.INSTALLED and os.readlink(device / "current") == f"releases/{version}"
    # the trust root travelled over ssh and is what later flashes check against
    assert (device / "trust" / "root.pub").read_bytes() == bundles.trust_key.read_bytes()
    assert load_device_bundle(device / "current").verified_key_id == bundles.key_id
    with pytest.raises(BundleError, match="unsigned"):
        flash(unsigned, _target(sshd, device))
    rc = main(
        [
            "flash",
            str(v2),
            "--to",
            sshd.url(device),
            "--identity",
            str(sshd.identity),
            "--known-hosts",
            str(sshd.known_hosts),
        ]
    )
    assert rc == 0 and os.readlink(device / "current") == "releases/v2"
    assert (
        load_bundle(device / "current", kind=BundleKind.EDGE).version == "v2"
    )  # what arrived is the bundle, bit for bit
    back = rollback(_target(sshd, device))
    assert back.version == version and os.readlink(device / "current") == f"releases/{version}"
    assert sorted(p.name for p in (device / "releases").iterdir()) == sorted(
        [version, f"{version}.sha256", "v2", "v2.sha256"]
    )


def test_an_interrupted_transfer_leaves_the_previous_release_active(bundles, sshd, tmp_path):
    device = tmp_path / "device"
    signer = bundles.trust_key.with_suffix(".key")
    v1 = rewrite_bundle(bundles.edge, tmp_path / "v1", version="v1", sign_key=signer)
    v2 = rewrite_bundle(bundles.edge, tmp_path / "v2", version="v2", sign_key=signer)
    flash(v1, _target(sshd, device), trust_key=bundles.trust_key)
    args = [
        "flash",
        str(v2),
        "--to",
        sshd.url(device),
        "--identity",
        str(sshd.identity),
        "--known-hosts",
        str(sshd.known_hosts),
        "--limit-kbps",
        "64",
    ]  # ~300 KB at 64 Kbit/s: about 40 s, killed after the copy has begun
    proc = subprocess.Popen(
        [sys.executable, "-m", "privsplit.cli.main", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    incoming = []
    while time.monotonic() < deadline and not incoming and proc.poll() is None:
        time.sleep(0.1)
        incoming = [p for p in (device / "releases").iterdir() if p.name.startswith(".incoming-") and p.is_dir()]
    time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read().decode()[-500:]
    os.killpg(proc.pid, signal.SIGKILL)  # the flash, its scp and ssh: a dropped link / a pulled plug
    proc.wait()
    proc.stderr.close()
    assert incoming, "the transfer never started"
    assert os.readlink(device / "current") == "releases/v1"
    assert load_bundle(device / "current", kind=BundleKind.EDGE).version == "v1"
    assert not (device / "releases" / "v2").exists()
    done = flash(v2, _target(sshd, device))  # the next flash removes the partial copy and completes
    assert done.action is FlashAction.INSTALLED and os.readlink(device / "current") == "releases/v2"
    assert not [p for p in (device / "releases").iterdir() if p.name.startswith(".")]


def test_unknown_host_and_wrong_key_are_refused(bundles, sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    device = tmp_path / "device"
    with pytest.raises(FlashError, match="over ssh: .*[Hh]ost key verification failed"):
        flash(
            bundles.edge,
            parse_target(sshd.url(device), identity=sshd.identity, known_hosts=empty),
            trust_key=bundles.trust_key,
        )
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(FlashError, match="Permission denied"):
        flash(
            bundles.edge,
            parse_target(sshd.url(device), identity=other, known_hosts=sshd.known_hosts),
            trust_key=bundles.trust_key,
        )
    assert not device.exists()
