"""The split-point profile on a real trained run: one row per candidate split with measured latency,
exact request bytes and the leakage indicator; the suggestion follows bandwidth and budget."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from privsplit.cli.main import main
from privsplit.models import feature_shape
from privsplit.probes.split_profile import (
    SplitProfile,
    SplitProfileSpec,
    SplitRuntime,
    distance_correlation,
    profile_splits,
    suggest,
)
from privsplit.run import RunFolder

pytestmark = pytest.mark.slow  # needs the session's trained digits run


def test_distance_correlation_known_cases():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    assert distance_correlation(x, x) == pytest.approx(1.0)
    assert distance_correlation(x, 3 * x @ np.linalg.qr(rng.normal(size=(5, 5)))[0] + 1) == pytest.approx(
        1.0
    )  # rotation, scale, shift
    assert abs(distance_correlation(x, rng.normal(size=(200, 3)))) < 0.03  # independent: ~0, unbiased
    assert (
        abs(distance_correlation(rng.normal(size=(64, 5000)), rng.normal(size=(64, 3000)))) < 0.03
    )  # also in high dimension
    assert 0.2 < distance_correlation(x[:, :1], x[:, :1] ** 2) < 0.8  # dependent, not linearly


def test_profile_rows_and_suggestions(digits_run, tmp_path, capsys):
    cfg = RunFolder(digits_run).config().model
    spec = SplitProfileSpec(
        runtime=SplitRuntime.ONNXRUNTIME, runs=5, samples=96, bandwidth_mbps=2.0, attack_samples=150, attack_epochs=5
    )
    profile = profile_splits(digits_run, spec)
    splits = [r.split for r in profile.rows]
    assert splits == list(range(1, cfg.split + cfg.head_blocks + 1))
    assert [r.split for r in profile.rows if r.trained] == [cfg.split]
    for r in profile.rows:
        assert r.feature_shape == feature_shape(replace(cfg, split=r.split))
        assert (
            int(np.prod(r.feature_shape)) < r.request_bytes < int(np.prod(r.feature_shape)) + 300
        )  # int8 + a small header
        assert r.device_ms > 0 and r.server_ms > 0 and 0 < r.dcor <= 1
        assert r.uplink_ms == pytest.approx(r.request_bytes * 8 / 2e6 * 1e3, rel=1e-3)
        assert r.total_ms == pytest.approx(r.device_ms + r.uplink_ms + r.server_ms, abs=1e-3)
        assert r.private_balanced_accuracy is None  # digits has no private attribute
    assert [r.request_bytes for r in profile.rows] == sorted((r.request_bytes for r in profile.rows), reverse=True)

    rows = list(profile.rows)
    fastest = min(rows, key=lambda r: (r.total_ms, r.split))
    reason = f"lowest end-to-end latency ({fastest.total_ms:.2f} ms; no budget given)"
    assert suggest(rows, spec) == (fastest.split, True, reason)
    budget = max(r.total_ms for r in rows) + 1
    # digits' slant is the one label beyond the task: every split measures its excess, and the budget picks by it
    assert all(r.attribute_worst == "slant" and r.leakage == r.attribute_excess for r in rows)
    floor = min(r.leakage for r in rows)
    least = min((r for r in rows if r.leakage <= floor + 0.01), key=lambda r: (r.total_ms, r.split))
    assert suggest(rows, replace(spec, budget_ms=budget)) == (
        least.split,
        True,
        (
            f"lowest measured leakage (excess {least.leakage:+.3f}, within 0.01 of the lowest, then fastest) "
            f"of the {len(rows)} split(s) within {budget:g} ms ({least.total_ms:.2f} ms)"
        ),
    )
    without = [replace(r, attribute_excess=None) for r in rows]  # nothing measured: dCor² decides, as before
    floor = min(r.dcor for r in rows)
    least = min((r for r in rows if r.dcor <= floor + 0.01), key=lambda r: (r.total_ms, r.split))
    assert suggest(without, replace(spec, budget_ms=budget))[:2] == (least.split, True)
    assert "lowest leakage indicator (dCor²" in suggest(without, replace(spec, budget_ms=budget))[2]
    assert suggest(rows, replace(spec, budget_ms=1e-6)) == (
        fastest.split,
        False,
        f"no split fits 1e-06 ms; the fastest takes {fastest.total_ms:.2f} ms",
    )
    slow_link = profile_splits(
        digits_run,
        replace(spec, runtime=SplitRuntime.TORCH, bandwidth_mbps=0.01, runs=3, samples=32, measure_leakage=False),
    )
    assert slow_link.suggested == splits[-1]  # at 10 kbit/s the fewest bytes win

    out = tmp_path / "profile.json"
    rc = main(
        [
            "split-profile",
            str(digits_run),
            "--runtime",
            "torch",
            "--runs",
            "3",
            "--samples",
            "32",
            "--bandwidth-mbps",
            "1",
            "--budget-ms",
            "1000",
            "--json",
            str(out),
            "--attack-samples",
            "100",
            "--attack-epochs",
            "3",
            "--quiet",
        ]
    )
    assert rc == 0 and "suggested split" in capsys.readouterr().out
    loaded = SplitProfile.from_json(json.loads(out.read_text()))
    assert loaded.to_json() == json.loads(out.read_text()) and loaded.within_budget
