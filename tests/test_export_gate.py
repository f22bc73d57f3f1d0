"""The leakage gate at export (issue 26, item 4): measured excesses on the shipped artefact's wire features, a refusal
above ``--max-excess`` that keeps the previous bundles, the record in parity.json and both signed manifests, and
``privsplit verify`` printing it on the device side.

The session's digits run is unprotected and names no private attribute, so its one other label, ``slant`` (the
writer's handwriting shear, which the digit does not predict), is the known leak: the unprotected features read it
far above chance (about 0.8 balanced accuracy against 0.5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from privsplit.bundle import BundleKind, load_bundle
from privsplit.cli.main import main
from privsplit.errors import ExportError
from privsplit.export.parity import ParityReport
from privsplit.leakage_gate import (
    DEFAULT_MAX_EXCESS,
    MANIFEST_KEY,
    GateQuestion,
    GateReading,
    GateRecord,
    manifest_gate_summary,
)

pytestmark = pytest.mark.slow  # the session's trained run

# the cheapest export that still measures: one float format, a small holdout, the probe's attackers at 1 epoch
ARGS = ["--formats", "onnx-fp32", "--calibration", "16", "--holdout-limit", "64", "--probe-epochs", "1", "--quiet"]


def _export(run, out, max_excess, **kw):
    """The library's export with a probe that trains nothing here (no private attribute, no reconstruction): the
    gate's own attackers are what measures."""
    from privsplit.export import ExportFormat, export_run
    from privsplit.probes.feature_spec import AttributeAttacker, FeatureProbeSpec

    spec = FeatureProbeSpec(attackers=(AttributeAttacker.LOGISTIC,), curve=(1.0,), pooled=False, reconstruction=False)
    return export_run(
        run,
        out,
        formats=(ExportFormat.ONNX_FP32,),
        calibration=16,
        holdout_limit=64,
        probe_spec=spec,
        progress=False,
        max_excess=max_excess,
        **kw,
    )


def _snapshot(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_gate_refuses_a_known_leak_keeps_the_previous_bundles_and_ships_under_a_looser_e(
    digits_run, tmp_path, capsys
):
    out = tmp_path / "export"
    edge = _export(digits_run, out, None).edge
    off = GateRecord.from_json(edge.manifest[MANIFEST_KEY])
    assert off.max_excess is None and off.readings == () and off.passed  # off: nothing measured, and it says so
    assert "--max-excess off" in off.skipped[0]
    capsys.readouterr()
    before = _snapshot(out)

    # E = 0: the unprotected features' slant reading is far above it; refused with exit 5, one line, nothing moved
    rc = main(["export", str(digits_run), "--out", str(out), "--force", "--max-excess", "0", *ARGS])
    line = _one_line(capsys.readouterr().err)
    assert rc == 5 == ExportError.exit_code
    for needle in ("leakage gate", "onnx-fp32", "other-attribute excess", "slant", "--max-excess 0", "--privacy"):
        assert needle in line, line
    assert _snapshot(out) == {**before, "parity-failed.json": (out / "parity-failed.json").read_bytes()}
    failed = GateRecord.from_json(ParityReport.load(out / "parity-failed.json").gate)
    (reading,) = failed.readings
    assert reading.question is GateQuestion.ATTRIBUTES and reading.artefact == "onnx-fp32" and not reading.passed
    assert reading.attacker.startswith("slant")
    assert reading.best > 0.7 and reading.floor == pytest.approx(0.5, abs=0.02)  # chance; the digit says nothing
    assert reading.null is not None and abs(reading.null - 0.5) < 0.05
    assert reading.excess > 0.15 and f"{reading.excess:+.3f}" in line
    assert any("no identity" in s for s in failed.skipped) and any("private attribute" in s for s in failed.skipped)
    assert any("no channel noise" in s for s in failed.skipped)  # sigma 0: 16 frames are one frame

    # E = 0.9: the same measurement ships, and the record travels signed-with the bundles and in parity.json
    shipped = _export(digits_run, out, 0.9, overwrite=True)
    assert not (out / "parity-failed.json").exists()
    assert "leakage gate: max excess 0.9; passed" in shipped.parity.summary()
    for kind in (BundleKind.EDGE, BundleKind.CLOUD):
        record = GateRecord.from_json(load_bundle(out / kind.value, kind=kind).manifest[MANIFEST_KEY])
        assert record.passed and record.max_excess == 0.9
        assert record.readings[0].excess == pytest.approx(reading.excess, abs=0.05)  # same data, same attacker
        assert record.readings[0].verdict == "pass"
    assert ParityReport.load(out / "parity.json").gate == load_bundle(out / "edge").manifest[MANIFEST_KEY]

    # the device side prints it (torch-free module), and says when a bundle records none
    assert main(["verify", str(out / "edge"), "--allow-unsigned"]) == 0
    shown = capsys.readouterr().out
    assert "leakage gate: max excess 0.9; passed" in shown and "slant" in shown and "onnx-fp32" in shown


def test_an_older_bundle_without_a_record_still_verifies(bundles, capsys):
    manifest = load_bundle(bundles.edge, kind=BundleKind.EDGE).manifest
    assert MANIFEST_KEY not in manifest  # exported with the probe skipped, as bundles made before the gate
    assert main(["verify", str(bundles.edge), "--trust-key", str(bundles.trust_key)]) == 0
    assert "leakage gate: none recorded" in capsys.readouterr().out


def test_record_round_trip_verdicts_and_refusal_line():
    readings = (
        GateReading(
            GateQuestion.PRIVATE, "tflite-int8", 1, best=0.62, floor=0.58, null=0.6, attacker="mlp", max_excess=0.05
        ),
        GateReading(
            GateQuestion.PRIVATE, "tflite-int8", 16, best=0.70, floor=0.58, null=0.6, attacker="mlp", max_excess=0.05
        ),
        GateReading(
            GateQuestion.LINKAGE,
            "tflite-int8",
            1,
            best=0.585,
            floor=0.5,
            null=0.503,
            attacker="cosine",
            max_excess=0.05,
        ),
    )
    record = GateRecord(max_excess=0.05, readings=readings, measured_on="tflite-int8", skipped=("x: y",), seconds=3.2)
    assert [r.excess for r in readings] == pytest.approx([0.02, 0.10, 0.082])  # best - max(floor, null)
    assert [r.verdict for r in readings] == ["pass", "FAIL", "FAIL"] and not record.passed
    again = GateRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record and again.to_json() == record.to_json()
    from privsplit.export.gate import refusal

    line = refusal(record, "OUT/parity.json")
    assert "\n" not in line and "tflite-int8's private-attribute excess +0.100" in line and "16 frames" in line
    assert "(and 1 more reading over it)" in line and "--max-excess 0.05" in line and "OUT/parity.json" in line
    text = manifest_gate_summary({MANIFEST_KEY: record.to_json()})
    assert "REFUSED" in text and "private (16 frames)" in text and "not measured: x: y" in text
    assert 0 < DEFAULT_MAX_EXCESS < 0.5 and math.isfinite(DEFAULT_MAX_EXCESS)


def test_bad_max_excess_values_are_one_line_errors(digits_run, tmp_path, capsys):
    for bad in ("-1", "abc", "nan", "inf", ""):
        with pytest.raises(SystemExit) as stop:
            main(["export", str(digits_run), "--out", str(tmp_path / "x"), "--max-excess", bad])
        assert stop.value.code == 2
        line = _one_line(capsys.readouterr().err)
        assert "--max-excess" in line and "'off'" in line
    rc = main(["export", str(digits_run), "--out", str(tmp_path / "x"), "--no-probe", "--max-excess", "0.1"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "--no-probe" in line and "--max-excess off" in line


def test_repeated_frames_average_the_device_noise_on_the_wire():
    """The frames reading's encoder: one artefact output per image, fresh seeded noise per frame, the int8 wire on
    each frame, the mean; its spread around the noise-free wire shrinks as 1/sqrt(K)."""
    from privsplit.bundle import FeatureSpec
    from privsplit.export.gate import CachedWire

    class Identity:  # an artefact whose output is its input (the gate only calls encode)
        def encode(self, x):
            return x.transpose(0, 3, 1, 2)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 4, 4, 2), dtype=np.uint8)
    wire = FeatureSpec(shape=(2, 4, 4), scale=0.02, zero_point=0, noise_sigma=0.5)
    cache = CachedWire(Identity(), images, wire, progress=False)
    clean = wire.dequantize(wire.quantize(images.transpose(0, 3, 1, 2).astype(np.float32) / 255))
    spread = {}
    for k in (1, 16):
        got = cache.encoder(frames=k, seed=1)(images[::-1])[::-1]  # rows are found by content, in any order
        spread[k] = float(np.std(got - clean))
    assert spread[1] == pytest.approx(0.5, rel=0.1)
    assert spread[16] == pytest.approx(0.5 / 4, rel=0.15)
    # a wire whose noise is keyed on the frame gives exact repeats the same noise: no 16-frame reading of its own
    from types import SimpleNamespace

    from privsplit.export.gate import frame_keyed

    assert not frame_keyed(wire) and frame_keyed(SimpleNamespace(noise_keying="frame"))
    assert not frame_keyed(SimpleNamespace(noise_keying="fresh"))


def test_verify_prints_the_record_on_a_device_without_torch(bundles, tmp_path):
    """``privsplit verify`` in an interpreter where torch, the exporter and the probes cannot be imported: the signed
    record of a bundle that carries one, and ``none recorded`` for one exported before the gate."""
    import subprocess
    import sys

    from test_edge_support import rewrite_bundle
    from test_edge_torchfree import BLOCKED, CHILD

    record = GateRecord(
        max_excess=0.1,
        readings=(GateReading(GateQuestion.PRIVATE, "tflite-int8", 16, 0.64, 0.58, 0.6, "mlp@attacker", 0.1),),
        measured_on="tflite-int8 (default encoder tflite-int8)",
    )
    gated = rewrite_bundle(
        bundles.edge,
        tmp_path / "gated",
        version="gated",
        sign_key=bundles.trust_key.with_suffix(".key"),
        **{MANIFEST_KEY: record.to_json()},
    )
    commands = [
        ["verify", str(gated), "--trust-key", str(bundles.trust_key)],
        ["verify", str(bundles.edge), "--trust-key", str(bundles.trust_key)],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(blocked=BLOCKED), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.rsplit("RESULT ", 1)[1]) == {"codes": [0, 0], "leaked": []}
    gated_out, plain_out = proc.stdout.split("ok: edge bundle")[1:]
    assert "leakage gate: max excess 0.1; passed" in gated_out and "private (16 frames)" in gated_out
    assert "+0.040" in gated_out and "mlp@attacker" in gated_out  # 0.64 - max(0.58, 0.60)
    assert "leakage gate: none recorded" in plain_out
