"""The tamper matrix (issue 27): what an attacker (or a curious user) does to a signed edge bundle, each refused on
the device by default with a one-line reason, and refused by a real gRPC server where it can see it.

A device is flashed once with the genuine bundle and its trust root. Every case then tries to flash a tampered
copy: the flash must fail naming the file and the fix, ``current`` and the trust state must stay as they were.
The manifest edits are also made to a copy of the device's own release, which every device load refuses
(``load_device_bundle``: edge infer / bench / selftest / verify). The server sees the manifest hash each
request carries: features from an edited manifest get FAILED_PRECONDITION naming the manifest."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_edge_support import holdout

from privsplit.bundle import ENDORSEMENTS, MANIFEST, SIGNATURE, BundleKind, load_bundle
from privsplit.edge.flash import flash
from privsplit.edge.trust import TrustState, load_device_bundle
from privsplit.errors import PrivsplitError
from privsplit.export.bundle_writer import write_bundle
from privsplit.export.signing import endorse_key, generate_keys, load_private_key

pytestmark = pytest.mark.slow  # the session's bundles (training + export, shared with the other edge tests)


def _edit_manifest(root: Path, change: Callable[[dict], None]) -> None:
    """Edit manifest.json in place, keeping the (now stale) signature: what a hand edit does."""
    data = json.loads((root / MANIFEST).read_text())
    change(data)
    (root / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _resign(root: Path, key_file: Path, *, release: int | None = None, endorsements=()) -> None:
    """Re-sign ``root`` in place with ``key_file`` (a new manifest: same body, optionally another release)."""
    bundle = load_bundle(root, kind=BundleKind.EDGE)
    if endorsements:
        (root / ENDORSEMENTS).write_text(json.dumps([json.loads(e) for e in endorsements]))
    generated = ("schema_version", "kind", "version", "created", "files")
    body = {k: v for k, v in bundle.manifest.items() if k not in generated}
    if release is not None:
        body["release"] = release
    write_bundle(root, kind=BundleKind.EDGE, version=bundle.version, body=body, sign_key=load_private_key(key_file))


def _features(key: str, value):
    return lambda m: m["features"].__setitem__(key, value(m["features"][key]))


@dataclass(frozen=True)
class Case:
    name: str
    tamper: Callable[[Path], None]  # applied to a copy of the genuine bundle
    reason: str  # regex the one-line refusal must match
    manifest_edit: bool = False  # the server can see it (another manifest hash)


def _cases(keys) -> list[Case]:
    def swap_encoder(root: Path) -> None:
        # the ONNX encoder's bytes under the TFLite encoder's name: a different model, same manifest
        shutil.copy2(root / "encoder-onnx-fp32.onnx", root / "encoder-tflite-int8.tflite")

    def downgrade(root: Path) -> None:
        _resign(root, keys["signer"].private, release=load_bundle(root, kind=BundleKind.EDGE).release - 1)

    return [
        Case("noise sigma 0", lambda r: _edit_manifest(r, _features("noise_sigma", lambda v: 0.0)), "altered"),
        Case("noise sigma halved", lambda r: _edit_manifest(r, _features("noise_sigma", lambda v: v / 2)), "altered"),
        Case("noise sigma +1", lambda r: _edit_manifest(r, _features("noise_sigma", lambda v: v + 1)), "altered", True),
        Case("wire scale", lambda r: _edit_manifest(r, _features("scale", lambda v: v * 2)), "altered", True),
        Case("wire zero point", lambda r: _edit_manifest(r, _features("zero_point", lambda v: v + 1)), "altered", True),
        Case(
            "preprocessing",
            lambda r: _edit_manifest(
                r, lambda m: m["preprocess"].__setitem__("std", [0.5] * len(m["preprocess"]["std"]))
            ),
            "altered",
            True,
        ),
        Case("swapped encoder", swap_encoder, r"encoder-tflite-int8.tflite (is tampered|truncated|has extra bytes)"),
        Case("removed signature", lambda r: (r / SIGNATURE).unlink(), r"manifest.sig missing: the bundle is unsigned"),
        Case(
            "signed by another key",
            lambda r: _resign(r, keys["other"].private),
            rf"signed by key {keys['other'].key_id}, not by .*trust root",
        ),
        Case("downgrade", downgrade, r"release \d+ is older than .* newest \d+ .*--allow-downgrade"),
    ]


def _state(device: Path) -> tuple[str, TrustState]:
    return os.readlink(device / "current"), TrustState.read(device)


def test_tamper_matrix_nothing_tampered_is_accepted(bundles, tmp_path):
    keys = {"signer": _pair(bundles.trust_key), "other": _pair(bundles.other_key)}
    genuine = tmp_path / "genuine"  # the export's edge bundle with channel noise 0.5, signed by the export's key
    shutil.copytree(bundles.noisy, genuine)
    _resign(genuine, keys["signer"].private)
    assert load_bundle(genuine, kind=BundleKind.EDGE).features.noise_sigma == 0.5
    device = tmp_path / "device"
    flash(genuine, device, trust_key=bundles.trust_key)
    before = _state(device)
    reasons, accepted = {}, []
    for i, case in enumerate(_cases(keys)):
        bundle = tmp_path / f"case{i}"
        shutil.copytree(genuine, bundle)
        case.tamper(bundle)
        try:
            flash(bundle, device)
            accepted.append(case.name)
            continue
        except PrivsplitError as exc:
            reasons[case.name] = str(exc)
        assert "\n" not in reasons[case.name] and str(bundle) in reasons[case.name], reasons[case.name]
        assert _re(case.reason, reasons[case.name]), (case.name, reasons[case.name])
        assert _state(device) == before, case.name  # a refused flash keeps the current release and trust
        if case.name != "downgrade" and not case.name.startswith("signed"):
            # the same edit made to the release already on the device: refused at load (edge infer/bench/...)
            copy = tmp_path / f"device{i}"
            shutil.copytree(device, copy, symlinks=True)
            case.tamper(copy / "current")
            with pytest.raises(PrivsplitError) as err:
                load_device_bundle(copy / "current")
            assert _re(case.reason, str(err.value)) and "\n" not in str(err.value), (case.name, err.value)
    rotation = _rotation_cases(bundles, tmp_path)
    reasons.update(rotation)
    print("\ntamper matrix:", *(f"  {name}: {why}" for name, why in reasons.items()), sep="\n")
    assert accepted == [] and len(reasons) >= 8, (accepted, reasons)


def _pair(public: Path):
    from privsplit.edge.trust import key_id_of
    from privsplit.export.signing import KeyPair

    return KeyPair(private=public.with_suffix(".key"), public=public, key_id=key_id_of(public))


def _re(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def _rotation_cases(bundles, tmp_path) -> dict[str, str]:
    """A device rotated from the export's key A to B (endorsed by A; B revokes C): bundles signed by the rotated-out
    A, or by the revoked C (with an endorsement chain that names it), are refused."""
    a = _pair(bundles.trust_key)
    b, c = generate_keys(tmp_path / "keys" / "b"), generate_keys(tmp_path / "keys" / "c")
    device = tmp_path / "rotated"
    flash(bundles.edge, device, trust_key=a.public)
    new = tmp_path / "rotated-bundle"
    shutil.copytree(bundles.edge, new)
    release = load_bundle(new, kind=BundleKind.EDGE).release + 1
    _resign(
        new,
        b.private,
        release=release,
        endorsements=[endorse_key(load_private_key(a.private), b.public, revokes=(c.key_id,))],
    )
    assert "rotated" in flash(new, device).trust
    before = _state(device)
    assert before[1].root_id == b.key_id
    reasons = {}
    old = tmp_path / "old-key-bundle"
    shutil.copytree(bundles.edge, old)
    _resign(old, a.private, release=release + 1)
    with pytest.raises(
        PrivsplitError, match=rf"signed by key {a.key_id}, which .* no longer trusts \(rotated out"
    ) as err:
        flash(old, device)
    reasons["signed by the rotated-out key"] = str(err.value)
    revoked = tmp_path / "revoked-key-bundle"
    shutil.copytree(bundles.edge, revoked)
    _resign(revoked, c.private, release=release + 1, endorsements=[endorse_key(load_private_key(b.private), c.public)])
    with pytest.raises(
        PrivsplitError, match=rf"signed by key {c.key_id}, which .* no longer trusts \(revoked by key"
    ) as err:
        flash(revoked, device)
    reasons["signed by a revoked key"] = str(err.value)
    assert _state(device) == before
    return reasons


def test_the_server_refuses_features_from_an_edited_manifest(bundles, tmp_path):
    """The cloud bundle lists the signed edge manifest's sha256; a device that runs an edited manifest (here with
    the verification skipped, as an attacker's device would) stamps its requests with another hash: refused."""
    from privsplit.cloud import ServeConfig, create_server
    from privsplit.edge.client import ClientConfig, EdgeClient, RetryPolicy
    from privsplit.edge.pipeline import EdgePipeline
    from privsplit.proto.status import Code, ProtocolError
    from privsplit.proto.wire import features_request

    edge = load_bundle(bundles.edge, kind=BundleKind.EDGE)
    cloud = load_bundle(bundles.cloud, kind=BundleKind.CLOUD)
    assert cloud.manifest["accepted_manifest_hashes"] == [edge.manifest_sha256]
    images, _ = holdout(bundles.run, 2)
    keys = {"signer": _pair(bundles.trust_key), "other": _pair(bundles.other_key)}
    srv, port = create_server(ServeConfig(bundle=bundles.cloud, port=0))
    refused = {}
    with srv, EdgeClient(ClientConfig(target=f"127.0.0.1:{port}", retry=RetryPolicy(attempts=1))) as client:
        genuine = EdgePipeline.open(edge, seed=0).encode(images)[1]
        assert genuine.manifest_hash == edge.manifest_sha256
        assert len(client.infer(_request(features_request, genuine)).label) == 2  # the control is served
        for i, case in enumerate(c for c in _cases(keys) if c.manifest_edit):
            bundle = tmp_path / f"edited{i}"
            shutil.copytree(bundles.edge, bundle)
            case.tamper(bundle)
            wire = EdgePipeline.open(load_device_bundle(bundle, allow_unsigned=True), seed=0).encode(images)[1]
            with pytest.raises(ProtocolError) as err:
                client.infer(_request(features_request, wire))
            assert err.value.code is Code.FAILED_PRECONDITION, case.name
            assert f"edge manifest {wire.manifest_hash[:16]!r}... is not accepted" in str(err.value), case.name
            refused[case.name] = str(err.value)
        # a hash that is not a string is malformed, not unknown
        bad = features_request(
            genuine.data, encoder_hash=genuine.encoder_hash, scale=genuine.scale, zero_point=genuine.zero_point
        )
        bad = dataclasses.replace(bad, parameters={**bad.parameters, "manifest_hash": 7})
        with pytest.raises(ProtocolError) as err:
            client.infer(bad)
        assert err.value.code is Code.INVALID_ARGUMENT and "manifest_hash" in str(err.value)
    assert len(refused) == 4  # noise, scale, zero point, preprocessing


def _request(features_request, wire):
    return features_request(
        wire.data,
        encoder_hash=wire.encoder_hash,
        manifest_hash=wire.manifest_hash,
        scale=wire.scale,
        zero_point=wire.zero_point,
    )
