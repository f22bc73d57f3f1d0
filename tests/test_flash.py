"""Flashing bundles into a device folder: releases, the atomic ``current`` switch, keep-N, rollback,
verification on the device, and flashes killed at arbitrary moments that never break ``current``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from test_edge_support import holdout, rewrite_bundle

from privsplit.bundle import BundleKind, load_bundle
from privsplit.cli.main import main
from privsplit.edge import flash as flashing
from privsplit.edge.flash import FlashAction, FlashError, LocalTarget, current_release, rollback
from privsplit.edge.pipeline import EdgePipeline
from privsplit.edge.trust import load_device_bundle
from privsplit.errors import BundleError

pytestmark = pytest.mark.slow  # the session's bundles (training + export, shared with the other edge tests)


_TRUST: dict[str, object] = {}


def flash(bundle, target, **kw):
    """``flash`` with the signer's public key: the first flash of a device installs it as the trust root."""
    kw.setdefault("trust_key", _TRUST["key"])
    return flashing.flash(bundle, target, **kw)


@pytest.fixture(scope="module")
def versions(bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("flash-versions")
    _TRUST["key"] = bundles.trust_key
    signer = bundles.trust_key.with_suffix(".key")
    return {v: rewrite_bundle(bundles.edge, root / v, version=v, sign_key=signer) for v in ("v1", "v2", "v3", "v4")}


def _releases(device) -> list[str]:
    return sorted(p.name for p in (device / "releases").iterdir() if p.is_dir())


def _history(device) -> list[str]:
    return (device / ".privsplit-history").read_text().split()


def test_flash_switch_keep_and_rollback(bundles, versions, tmp_path):
    device = tmp_path / "device"
    target = LocalTarget(device)
    first = flash(versions["v1"], target, keep=2)
    assert first.action is FlashAction.INSTALLED and first.previous is None and first.uploaded_bytes > 50_000
    assert os.readlink(device / "current") == "releases/v1"  # relative: the folder can move (SD card, rootfs)
    flash(versions["v2"], target, keep=2)
    third = flash(versions["v3"], target, keep=2)
    assert third.previous == "v2" and third.removed == ("v1",)
    assert _releases(device) == ["v2", "v3"] and _history(device) == ["v2", "v3"]
    assert not (device / "releases" / "v1.sha256").exists()
    # the active release is a verified bundle a device pipeline runs
    pipe = EdgePipeline.open(load_device_bundle(device / "current"))  # verified against the device root
    assert pipe.bundle.version == "v3" and current_release(device) == (device / "releases" / "v3").resolve()
    images, _ = holdout(bundles.run, 4)
    np.testing.assert_array_equal(pipe.encode(images)[1].data, EdgePipeline.open(bundles.edge).encode(images)[1].data)

    assert flash(versions["v3"], target).action is FlashAction.UNCHANGED
    back = rollback(target)
    assert back.action is FlashAction.ROLLED_BACK and back.version == "v2" and back.previous == "v3"
    assert os.readlink(device / "current") == "releases/v2" and _history(device) == ["v2"]
    with pytest.raises(FlashError, match="no earlier release"):
        rollback(target)
    again = flash(versions["v3"], target, keep=2)  # still on the device: re-verified, switched, nothing uploaded
    assert again.action is FlashAction.SWITCHED and again.uploaded_bytes == 0 and _history(device) == ["v2", "v3"]
    with pytest.raises(FlashError, match="no current release"):
        rollback(LocalTarget(tmp_path / "empty"))
    assert not (tmp_path / "empty").exists()  # a mistyped target is not created by a rollback


def test_one_flash_at_a_time_per_device(versions, tmp_path):
    device = tmp_path / "device"
    target = LocalTarget(device)
    flash(versions["v1"], target)
    assert not (device / ".privsplit-lock").exists()  # released after a flash
    (device / ".privsplit-lock").mkdir()  # another flash is running (or was killed)
    owner = f"{time.time():.0f} 1 other-laptop cafe\n"  # a live flash from another machine
    (device / ".privsplit-lock" / "owner").write_text(owner)
    for attempt in (lambda: flash(versions["v2"], target), lambda: rollback(target)):
        with pytest.raises(
            FlashError, match=r"another flash or rollback is running .*other-laptop.*remove .*\.privsplit-lock"
        ):
            attempt()
    assert os.readlink(device / "current") == "releases/v1" and _releases(device) == ["v1"]
    assert (device / ".privsplit-lock" / "owner").read_text() == owner  # someone else's lock is left alone
    # a lock whose owner died on this host, or one over an hour old, is taken over
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale_locks = (
        (f"{time.time():.0f} {dead} {socket.gethostname()} dead\n", "v2", FlashAction.INSTALLED),
        (f"{time.time() - 7200:.0f} 1 other-laptop old\n", "v1", FlashAction.SWITCHED),
    )
    for stale, version, action in stale_locks:
        (device / ".privsplit-lock" / "owner").write_text(stale)
        assert flash(versions[version], target).action is action
        assert not (device / ".privsplit-lock").exists()
        (device / ".privsplit-lock").mkdir()
    # a lock without an owner (a flash killed between its mkdir and the owner's write) is taken over too
    assert flash(versions["v2"], target).action is FlashAction.SWITCHED
    assert not (device / ".privsplit-lock").exists() and os.readlink(device / "current") == "releases/v2"


def test_only_verified_bundles_reach_the_device(bundles, versions, tmp_path):
    device = tmp_path / "device"
    flash(bundles.edge, device.as_posix(), trust_key=bundles.trust_key)
    active = os.readlink(device / "current")
    with pytest.raises(BundleError, match="is key .*, but .* trusts"):  # the root is not replaced by a flag
        flash(bundles.edge, device.as_posix(), trust_key=bundles.other_key)
    with pytest.raises(BundleError, match="unsigned"):
        flash(rewrite_bundle(bundles.edge, tmp_path / "unsigned", version="v8"), device.as_posix())
    tampered = rewrite_bundle(bundles.edge, tmp_path / "tampered", version="v9")
    with open(tampered / "encoder-onnx-fp32.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="encoder-onnx-fp32.onnx has extra bytes"):
        flash(tampered, device.as_posix())
    with pytest.raises(BundleError, match="cloud bundle"):
        flash(bundles.cloud, device.as_posix())
    assert os.readlink(device / "current") == active and _releases(device) == [active.split("/")[1]]


def test_a_release_corrupted_on_the_device_is_never_switched_to(versions, tmp_path):
    device = tmp_path / "device"
    for v in ("v1", "v2"):
        flash(versions[v], LocalTarget(device))
    victim = device / "releases" / "v1" / "encoder-tflite-int8.tflite"
    victim.write_bytes(victim.read_bytes()[:1000])  # truncated on the device (bad SD card, partial copy)
    with pytest.raises(FlashError, match="does not match its checksums"):
        rollback(LocalTarget(device))
    assert os.readlink(device / "current") == "releases/v2"
    healed = flash(versions["v1"], LocalTarget(device))  # the broken copy is detected and replaced
    assert healed.action is FlashAction.INSTALLED
    assert load_bundle(device / "current", kind=BundleKind.EDGE).version == "v1"


def test_a_flash_killed_at_any_moment_leaves_a_working_current(versions, tmp_path):
    """Kill the flashing process (and its shell) at spread-out moments: ``current`` always resolves to a
    complete, verified release (the old or the new one), and the next flash cleans up and succeeds."""
    device = tmp_path / "device"
    flash(versions["v1"], LocalTarget(device), keep=1)
    started = time.perf_counter()
    flash(versions["v2"], LocalTarget(device), keep=1)
    duration = time.perf_counter() - started
    child = (
        "import sys; from privsplit.edge.flash import flash; "
        "print('go', flush=True); flash(sys.argv[1], sys.argv[2], keep=1, trust_key=sys.argv[3])"
    )
    for i, fraction in enumerate(np.linspace(0.0, 1.3, 10)):
        want = "v1" if i % 2 == 0 else "v2"
        before = os.readlink(device / "current")
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(versions[want]), str(device), str(_TRUST["key"])],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout.readline().strip() == "go"
        time.sleep(fraction * duration)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stdout.close()
        now = os.readlink(device / "current")
        assert now in (before, f"releases/{want}")
        assert load_bundle(device / "current", kind=BundleKind.EDGE).version == now.split("/")[1]
    result = flash(versions["v3"], LocalTarget(device), keep=1)
    assert result.version == "v3" and _releases(device) == ["v3"]
    assert not [p for p in (device / "releases").iterdir() if p.name.startswith(".")]
    assert not [p for p in device.iterdir() if p.name.startswith(".current-")]


def test_flash_command(versions, tmp_path, capsys):
    device = tmp_path / "device"
    out = tmp_path / "flash.json"
    assert main(["flash", str(versions["v1"]), "--to", str(device)]) == 3  # no trust root yet, no --trust-key
    assert "--trust-key PREFIX.pub" in capsys.readouterr().err and not (device / "current").exists()
    assert main(["flash", str(versions["v1"]), "--to", str(device), "--trust-key", str(_TRUST["key"])]) == 0
    assert main(["flash", str(versions["v2"]), "--to", str(device), "--keep", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["action"] == "installed" and "current -> releases/v2" in capsys.readouterr().out
    assert main(["flash", "--rollback", "--to", str(device)]) == 0
    assert "current -> releases/v1 (was v2): rolled back" in capsys.readouterr().out
    assert main(["flash", "--to", str(device)]) == 2
    assert "give the BUNDLE" in capsys.readouterr().err
    assert main(["flash", str(versions["v1"]), "--rollback", "--to", str(device)]) == 2
    assert main(["flash", str(versions["v1"]), "--to", "ftp://host/x"]) == 2
    assert main(["flash", str(versions["v1"]), "--to", str(device), "--identity", "k"]) == 2
    assert os.readlink(device / "current") == "releases/v1"


def test_keep_n_keeps_n_after_rollbacks_and_a_re_flash(versions, tmp_path):
    device = tmp_path / "device"
    target = LocalTarget(device)
    for v in ("v1", "v2", "v3"):
        flash(versions[v], target, keep=3)
    assert rollback(target).version == "v2" and rollback(target).version == "v1"
    again = flash(versions["v3"], target, keep=3)  # the release rolled back from is still among the last 3
    assert again.action is FlashAction.SWITCHED and again.removed == ()
    assert _releases(device) == ["v1", "v2", "v3"] and sorted(again.kept) == ["v1", "v2", "v3"]
    assert rollback(target).version == "v1"  # the rollback history still reaches back
    assert flash(versions["v3"], target, keep=3).removed == ()
    fourth = flash(versions["v4"], target, keep=3)  # least recently active: v2 (v1 and v3 were active since)
    assert fourth.removed == ("v2",) and _releases(device) == ["v1", "v3", "v4"]
    assert list(fourth.kept) == ["v1", "v3", "v4"] and _history(device)[-1] == "v4"


def test_re_flashing_the_current_version_never_leaves_current_unresolved(versions, tmp_path):
    """A reader resolving ``current`` in a tight loop while the damaged current release is re-flashed
    finds a complete manifest every time (the old script moved releases/<v> aside first)."""
    import threading

    device = tmp_path / "device"
    flash(versions["v1"], LocalTarget(device))
    flash(versions["v2"], LocalTarget(device))
    victim = device / "releases" / "v2" / "encoder-tflite-int8.tflite"
    checks, misses, done = [0], [], threading.Event()

    def reader():
        while not done.is_set():
            checks[0] += 1
            if not (device / "current" / "manifest.json").is_file():
                misses.append(os.readlink(device / "current") if (device / "current").is_symlink() else None)

    for _ in range(3):
        victim.write_bytes(victim.read_bytes()[:1000])  # damaged on the device: the re-flash re-uploads it
        done.clear()
        thread = threading.Thread(target=reader)
        thread.start()
        try:
            result = flash(versions["v2"], LocalTarget(device))
        finally:
            done.set()
            thread.join()
        assert result.action is FlashAction.INSTALLED and result.previous == "v2"
        assert os.readlink(device / "current") == "releases/v2"
        assert load_bundle(device / "current", kind=BundleKind.EDGE).version == "v2"
    assert misses == [] and checks[0] > 100
    assert _releases(device) == ["v1", "v2"]
    assert not [p for p in (device / "releases").iterdir() if p.name.startswith(".")]


def test_a_lock_left_without_an_owner_is_taken_over(versions, tmp_path):
    """A flash killed between creating the lock and writing its owner leaves an ownerless lock: taken over."""
    device = tmp_path / "device"
    flash(versions["v1"], LocalTarget(device))
    (device / ".privsplit-lock").mkdir()
    assert flash(versions["v2"], LocalTarget(device)).action is FlashAction.INSTALLED
    assert not (device / ".privsplit-lock").exists() and os.readlink(device / "current") == "releases/v2"
    assert not [p for p in device.iterdir() if p.name.startswith(".privsplit-lock")]
