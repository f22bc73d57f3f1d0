"""The device's trust root (issue 27): installed by the first flash, checked on every flash and load, rotated by
endorsement, revoked keys refused, anti-rollback. Torch-free and fast: small bundles from test_bundle's writer
(flash never runs the encoder); the same rules on a real exported bundle are the tamper matrix's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_bundle import _make_edge

from privsplit.bundle import ENDORSEMENTS, BundleKind, load_bundle
from privsplit.cli.main import main
from privsplit.edge.flash import FlashError, flash, read_trust, rollback
from privsplit.edge.trust import TrustState, find_device, load_device_bundle
from privsplit.errors import BundleError, ConfigError
from privsplit.export.bundle_writer import write_bundle
from privsplit.export.signing import endorse_key, generate_keys, load_private_key


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust-keys")
    return {name: generate_keys(d / name) for name in ("a", "b", "c", "d")}


@pytest.fixture(scope="module")
def base(tmp_path_factory, keys):
    return _make_edge(tmp_path_factory.mktemp("trust-base") / "edge", key=load_private_key(keys["a"].private)).root


def resign(src: Path, dest: Path, *, key=None, version: str, release: int, endorsements=(), **changes) -> Path:
    """A copy of bundle ``src`` with a new version/release (and manifest keys), signed by ``key`` (a KeyPair)."""
    bundle = load_bundle(src, kind=BundleKind.EDGE)
    shutil.copytree(src, dest)
    (dest / ENDORSEMENTS).unlink(missing_ok=True)
    if endorsements:
        (dest / ENDORSEMENTS).write_text(json.dumps([json.loads(e) for e in endorsements]))
    generated = ("schema_version", "kind", "version", "created", "files")
    body = {k: v for k, v in bundle.manifest.items() if k not in generated}
    body.update(changes, release=release)
    sign = None if key is None else load_private_key(key.private)
    write_bundle(dest, kind=BundleKind.EDGE, version=version, body=body, sign_key=sign)
    return dest


def _current(device: Path) -> str:
    return os.readlink(device / "current")


def test_the_first_flash_installs_the_trust_root_and_later_ones_check_against_it(base, keys, tmp_path):
    device = tmp_path / "dev"
    v1 = resign(base, tmp_path / "v1", key=keys["a"], version="v1", release=10)
    with pytest.raises(BundleError, match=r"has no trust root .*--trust-key PREFIX.pub"):
        flash(v1, device)
    assert not (device / "current").exists()
    result = flash(v1, device, trust_key=keys["a"].public)
    assert f"trust root {keys['a'].key_id} installed" in result.summary()
    state = TrustState.read(device)
    assert state.root_id == keys["a"].key_id and state.newest_release == 10 and not state.revoked
    # later flashes need no key; a different --trust-key cannot replace the root
    v2 = resign(base, tmp_path / "v2", key=keys["a"], version="v2", release=11)
    assert flash(v2, device).version == "v2"
    with pytest.raises(BundleError, match=f"is key {keys['b'].key_id}, but .* trusts {keys['a'].key_id}"):
        flash(v2, device, trust_key=keys["b"].public)
    unsigned = resign(base, tmp_path / "u", version="v3", release=12)
    with pytest.raises(BundleError, match=r"manifest.sig missing: the bundle is unsigned .*--allow-unsigned"):
        flash(unsigned, device)
    foreign = resign(base, tmp_path / "f", key=keys["b"], version="v3", release=12)
    with pytest.raises(BundleError, match=f"signed by key {keys['b'].key_id}, not by .*trust root"):
        flash(foreign, device)
    assert _current(device) == "releases/v2"
    assert "NOT checked" in flash(unsigned, device, allow_unsigned=True).summary()  # development escape hatch


def test_anti_rollback_refuses_older_releases_but_rollback_stays_allowed(base, keys, tmp_path):
    device = tmp_path / "dev"
    new = resign(base, tmp_path / "new", key=keys["a"], version="new", release=200)
    old = resign(base, tmp_path / "old", key=keys["a"], version="old", release=100)
    flash(old, device, trust_key=keys["a"].public)
    flash(new, device)
    assert TrustState.read(device).newest_release == 200
    (device / "releases" / "old").rename(device / "releases" / "gone")  # so the flash must install it again
    shutil.rmtree(device / "releases" / "gone")
    (device / "releases" / "old.sha256").unlink()
    with pytest.raises(FlashError, match=r"release 100 is older than .*newest 200 .*--allow-downgrade"):
        flash(old, device)
    assert _current(device) == "releases/new"
    assert flash(old, device, allow_downgrade=True).version == "old"
    assert TrustState.read(device).newest_release == 200  # the newest ever stays the bar
    assert rollback(device).version == "new"  # back to a release still on the device: allowed


def test_rotation_by_endorsement_then_the_old_key_is_refused(base, keys, tmp_path):
    device = tmp_path / "dev"
    a, b, c, d = (keys[k] for k in "abcd")
    flash(resign(base, tmp_path / "v1", key=a, version="v1", release=1), device, trust_key=a.public)
    a_to_b = endorse_key(load_private_key(a.private), b.public)
    rotated = flash(resign(base, tmp_path / "v2", key=b, version="v2", release=2, endorsements=[a_to_b]), device)
    assert f"trust root rotated {a.key_id} -> {b.key_id}" in rotated.trust
    state = TrustState.read(device)
    assert state.root_id == b.key_id and state.revoked[a.key_id].startswith("rotated out")
    # a bundle still signed by the rotated-out key: refused on flash, and the rollback to v1 (signed by A) too
    with pytest.raises(BundleError, match=f"signed by key {a.key_id}, which .* no longer trusts \\(rotated out"):
        flash(resign(base, tmp_path / "v3", key=a, version="v3", release=3), device)
    with pytest.raises(BundleError, match=f"release v1 is signed by key {a.key_id} \\(rotated out"):
        rollback(device)
    assert _current(device) == "releases/v2"
    # B endorses C and revokes D: D is refused forever, even with an endorsement chain that names it
    b_to_c = endorse_key(load_private_key(b.private), c.public, revokes=(d.key_id,))
    flash(resign(base, tmp_path / "v4", key=c, version="v4", release=4, endorsements=[b_to_c]), device)
    c_to_d = endorse_key(load_private_key(c.private), d.public)
    revoked = resign(base, tmp_path / "v5", key=d, version="v5", release=5, endorsements=[c_to_d])
    with pytest.raises(BundleError, match=f"signed by key {d.key_id}, which .* no longer trusts \\(revoked by key"):
        flash(revoked, device)
    # a forged endorsement (signed by a key that is not the root) leads nowhere
    forged = endorse_key(load_private_key(d.private), a.public)
    with pytest.raises(BundleError, match="no longer trusts"):
        flash(resign(base, tmp_path / "v6", key=a, version="v6", release=6, endorsements=[forged]), device)
    assert _current(device) == "releases/v4" and TrustState.read(device).root_id == c.key_id


def test_a_device_that_missed_a_rotation_follows_the_chain(base, keys, tmp_path):
    a, b, c = keys["a"], keys["b"], keys["c"]
    device = tmp_path / "dev"
    flash(resign(base, tmp_path / "v1", key=a, version="v1", release=1), device, trust_key=a.public)
    chain = [endorse_key(load_private_key(a.private), b.public), endorse_key(load_private_key(b.private), c.public)]
    flash(resign(base, tmp_path / "v3", key=c, version="v3", release=3, endorsements=chain), device)
    state = TrustState.read(device)
    assert state.root_id == c.key_id and {a.key_id, b.key_id} <= set(state.revoked)


def test_every_load_on_the_device_verifies_against_its_root(base, keys, tmp_path, capsys):
    device = tmp_path / "dev"
    flash(resign(base, tmp_path / "v1", key=keys["a"], version="v1", release=1), device, trust_key=keys["a"].public)
    assert find_device(device / "current") == device and find_device(device / "releases" / "v1") == device
    assert load_device_bundle(device / "current").verified_key_id == keys["a"].key_id
    assert main(["verify", str(device / "current")]) == 0  # no key needed: the device's root is used
    assert "signature verified" in capsys.readouterr().out
    # a release edited on the device after the flash (noise off) is refused at load, by default
    manifest = device / "releases" / "v1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["features"]["noise_sigma"] = 0.0
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    with pytest.raises(BundleError, match="altered after signing"):
        load_device_bundle(device / "current")
    # a bundle outside a device needs a key (or the explicit development flag)
    out_edge = resign(base, tmp_path / "out", key=keys["a"], version="v9", release=9)
    with pytest.raises(BundleError, match=r"signature cannot be checked \(no trusted key was given\)"):
        load_device_bundle(out_edge)
    assert load_device_bundle(out_edge, trust_key=keys["a"].public).verified_key_id == keys["a"].key_id
    assert load_device_bundle(out_edge, allow_unsigned=True).verified_key_id is None
    assert main(["edge", "infer", str(out_edge), str(tmp_path), "--server", "127.0.0.1:9"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "signature cannot be checked" in err and "--allow-unsigned" in err
    assert main(["edge", "bench", str(device / "current"), "--runs", "1"]) == 3
    assert "altered after signing" in capsys.readouterr().err


def test_flash_cli_verifies_by_default_and_warns_when_told_not_to(base, keys, tmp_path, capsys):
    device = tmp_path / "dev"
    v1 = resign(base, tmp_path / "v1", key=keys["a"], version="v1", release=1)
    assert main(["flash", str(v1), "--to", str(device)]) == 3
    assert "no trust root" in capsys.readouterr().err
    assert main(["flash", str(v1), "--to", str(device), "--trust-key", str(keys["a"].public)]) == 0
    assert "trust root" in capsys.readouterr().out
    unsigned = resign(base, tmp_path / "u", version="v2", release=2)
    assert main(["flash", str(unsigned), "--to", str(device)]) == 3
    assert main(["flash", str(unsigned), "--to", str(device), "--allow-unsigned"]) == 0
    assert "warning: --allow-unsigned" in capsys.readouterr().err
    assert main(["flash", "--rollback", "--to", str(device)]) == 0  # v1 is signed by the root
    older = resign(base, tmp_path / "old", key=keys["a"], version="v0", release=0)
    assert main(["flash", str(older), "--to", str(device)]) == 8
    assert "--allow-downgrade" in capsys.readouterr().err
    state, signer = read_trust(device, release="v1")  # the same state as the shell sees it
    assert state == TrustState.read(device) and signer == keys["a"].key_id


def test_keys_endorse_cli(keys, tmp_path, capsys):
    out = tmp_path / "a-to-b.json"
    args = ["keys", "endorse", "--key", str(keys["a"].private), "--new", str(keys["b"].public), "--out", str(out)]
    assert main([*args, "--revoke", keys["d"].key_id]) == 0
    assert f"key {keys['a'].key_id} endorses key {keys['b'].key_id}; revokes {keys['d'].key_id}" in (
        capsys.readouterr().out
    )
    assert json.loads(out.read_text())["revokes"] == [keys["d"].key_id]
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main([*args, "--force", "--revoke", "zz"]) == 2 and "is not a key id" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="endorsing key itself"):
        endorse_key(load_private_key(keys["a"].private), keys["a"].public)
