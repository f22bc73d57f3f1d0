"""``export --force`` builds in a staging folder and swaps at the end (issue 27): a re-export that fails leaves the
previous bundles exactly as they were; one that succeeds replaces them whole. Also what export writes for the
device trust root: the release number and a key endorsement shipped in the edge bundle."""

from __future__ import annotations

import json

import pytest

from privsplit.bundle import ENDORSEMENTS, BundleKind, load_bundle, read_endorsements
from privsplit.errors import ConfigError, ExportError
from privsplit.export import ExportFormat
from privsplit.export.signing import endorse_key, generate_keys, load_private_key

pytestmark = pytest.mark.slow  # the session's trained run


def _export(run, out, **kw):
    from privsplit.export import export_run

    return export_run(
        run, out, formats=(ExportFormat.ONNX_FP32,), calibration=16, holdout_limit=32, progress=False, **kw
    )


def _snapshot(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_failed_re_export_leaves_the_previous_bundles_intact(bundles, tmp_path, monkeypatch):
    import privsplit.export.pipeline as pipeline

    out = tmp_path / "out"
    first = _export(bundles.run, out, sign_key=bundles.trust_key.with_suffix(".key"), release=5)
    assert first.edge.root == out / "edge" and first.edge.release == 5 and first.cloud.release == 5
    assert first.cloud.manifest["accepted_manifest_hashes"] == [first.edge.manifest_sha256]
    before = _snapshot(out)
    with pytest.raises(ConfigError, match="already exists"):
        _export(bundles.run, out)
    real = pipeline.write_bundle

    def fail_on_cloud(root, **kw):  # the edge bundle is already written (in staging) when the cloud one fails
        if kw["kind"] is BundleKind.CLOUD:
            raise ExportError("simulated failure while writing the cloud bundle")
        return real(root, **kw)

    monkeypatch.setattr(pipeline, "write_bundle", fail_on_cloud)
    with pytest.raises(ExportError, match="simulated failure"):
        _export(bundles.run, out, overwrite=True, release=6)
    assert _snapshot(out) == before  # nothing removed, nothing half-written, no staging left behind
    assert load_bundle(out / "edge", kind=BundleKind.EDGE, trust_key=bundles.trust_key).release == 5
    monkeypatch.setattr(pipeline, "write_bundle", real)
    second = _export(bundles.run, out, overwrite=True, release=6)
    assert load_bundle(out / "edge", kind=BundleKind.EDGE).release == 6 == second.edge.release
    assert second.edge.root == out / "edge" and second.cloud.root == out / "cloud"
    assert sorted(p.name for p in out.iterdir()) == ["cloud", "edge", "parity.json"]  # no staging folders left


def test_export_ships_a_key_endorsement_for_rotation(bundles, tmp_path):
    new = generate_keys(tmp_path / "keys" / "new")
    endorsement = tmp_path / "old-to-new.json"
    endorsement.write_bytes(endorse_key(load_private_key(bundles.trust_key.with_suffix(".key")), new.public))
    with pytest.raises(ConfigError, match="sign with the endorsed key"):
        _export(
            bundles.run, tmp_path / "wrong", sign_key=bundles.trust_key.with_suffix(".key"), endorsements=(endorsement,)
        )
    result = _export(bundles.run, tmp_path / "out", sign_key=new.private, endorsements=(endorsement,))
    edge = load_bundle(result.edge.root, kind=BundleKind.EDGE, trust_key=new.public)
    assert ENDORSEMENTS in edge.manifest["files"]  # listed and hashed like every bundle file
    (chain,) = read_endorsements(edge.root)
    assert chain.key_id == new.key_id and chain.endorser == bundles.key_id
    assert json.loads((edge.root / ENDORSEMENTS).read_text())[0]["key_id"] == new.key_id
