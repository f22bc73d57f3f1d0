"""``split-profile`` ranks split points by measured leakage (issue 26, item 5), on a case where the answer is known.

The session's unprotected digits run, copied, with its last server block's convolutions zeroed: the activation at
the last split is then the same for every image (a constant), so no attacker can read anything there, while the
first split (one convolution block over the pixels) still carries the writer's slant. The profile must measure a
large excess at split 1, none at the last split, and rank the last split first."""

from __future__ import annotations

import json
import shutil

import pytest

from privsplit.errors import ResultError
from privsplit.probes.split_profile import (
    PROFILE_SCHEMA_VERSION,
    SplitProfile,
    SplitProfileSpec,
    SplitRuntime,
    profile_splits,
)
from privsplit.run import RunFolder

pytestmark = pytest.mark.slow  # the session's trained digits run


@pytest.fixture(scope="module")
def blinded_run(digits_run, tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("blind") / "run"
    shutil.copytree(digits_run, path)
    run = RunFolder(path)
    model = run.load_split_model()
    with torch.no_grad():
        for layer in model.head.body[-1]:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.zero_()
    run.save_module("head", model.head)
    return path


_V1_ROW = {
    "split",
    "trained",
    "feature_shape",
    "request_bytes",
    "device_ms",
    "server_ms",
    "uplink_ms",
    "total_ms",
    "dcor",
    "private_balanced_accuracy",
}


def test_a_split_known_to_carry_nothing_ranks_first_and_one_known_to_leak_last(blinded_run, tmp_path):
    cfg = RunFolder(blinded_run).config().model
    spec = SplitProfileSpec(runtime=SplitRuntime.TORCH, runs=2, warmup=0, samples=64, attack_epochs=10)
    profile = profile_splits(blinded_run, spec)
    first, last = profile.row(1), profile.row(cfg.split + cfg.head_blocks)
    for row in profile.rows:  # digits: no private attribute, no identities; slant is the other attribute
        assert row.private_excess is None and row.linkage_excess is None and row.attribute_worst == "slant"
        assert row.leakage == row.attribute_excess
        assert row.attribute_floor == pytest.approx(0.5, abs=0.03)  # the digit says nothing about slant
        assert row.attribute_null is not None and abs(row.attribute_null - 0.5) < 0.05
    # split 1 leaks slant (unprotected pixels' first block), the blinded last split nothing at all
    assert first.attribute_balanced_accuracy > 0.7 and first.attribute_excess > 0.15
    assert last.attribute_excess <= 0.02 and abs(last.dcor) < 0.05
    assert last.rank == 1 and first.rank > 1
    assert sorted(r.rank for r in profile.rows) == list(range(1, len(profile.rows) + 1))
    ranked = sorted(profile.rows, key=lambda r: r.rank)
    assert [r.leakage for r in ranked] == sorted(r.leakage for r in ranked)  # the rank follows measured leakage
    budgeted = profile_splits(blinded_run, spec.__class__(**{**spec.__dict__, "budget_ms": 1e6, "attack_samples": 200}))
    assert budgeted.suggested == last.split and "lowest measured leakage" in budgeted.reason
    assert "leakage" in profile.summary() and "slant" in profile.summary()

    out = tmp_path / "profile.json"
    profile.save(out)
    data = json.loads(out.read_text())
    assert data["schema_version"] == PROFILE_SCHEMA_VERSION == 2 and data["kind"] == "split-profile"
    assert data["rows"][0]["leakage"] == pytest.approx(first.leakage)
    assert SplitProfile.load(out) == profile
    out.write_text(json.dumps({**data, "schema_version": 3}))
    with pytest.raises(ResultError, match="re-run `privsplit split-profile"):
        SplitProfile.load(out)
    version_1 = {k: v for k, v in data.items() if k != "kind"} | {"schema_version": 1}
    version_1["rows"] = [{k: v for k, v in r.items() if k in _V1_ROW} for r in data["rows"]]
    out.write_text(json.dumps(version_1))
    old = SplitProfile.load(out)  # a file of the previous version loads, its rows unmeasured and unranked
    assert [r.split for r in old.rows] == [r.split for r in profile.rows]
    assert all(r.leakage is None and r.rank == 0 for r in old.rows)
