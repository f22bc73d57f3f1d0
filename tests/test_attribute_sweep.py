"""Every other attribute: the sweep reads each one's best attacker against chance, its own task floor and the null."""

from dataclasses import replace

import numpy as np
import pytest

from privsplit.data import Dataset
from privsplit.data.splits import make_split
from privsplit.errors import ConfigError
from privsplit.probes.attribute_sweep import AttributeSweepResult, probe_attribute_sweep, resolve_attributes, sweep_spec
from privsplit.probes.feature_spec import AttributeAttacker


def _faces(n=1200, seed=0):
    """8x8 grey 'images' whose pixels carry the task and attribute `shown`, not `hidden`; `follows_task` is the
    task label with 10% flips (readable exactly as far as the task floor says)."""
    rng = np.random.default_rng(seed)
    task = rng.integers(0, 2, n)
    shown = rng.integers(0, 2, n)
    hidden = rng.integers(0, 2, n)
    follows_task = np.where(rng.random(n) < 0.1, 1 - task, task)
    images = rng.integers(0, 60, size=(n, 8, 8, 1)).astype(np.uint8)
    images[:, 0, :, 0] += (150 * task[:, None]).astype(np.uint8)
    images[:, 1, :, 0] += (150 * shown[:, None]).astype(np.uint8)
    two = ("no", "yes")
    return Dataset(
        images=images,
        labels={"Smiling": task, "Shown": shown, "Hidden": hidden, "FollowsTask": follows_task, "identity": task},
        classes={"Smiling": two, "Shown": two, "Hidden": two, "FollowsTask": two, "identity": two},
        source="synthetic",
        task="Smiling",
        private="Shown",
    )


def _encode(images):
    return images.reshape(len(images), 1, 8, 8).astype(np.float32) / 255.0


def test_sweep_reads_each_attribute_against_its_own_floor_and_null(tmp_path):
    data = _faces()
    split = make_split(len(data), seed=0)
    spec = replace(sweep_spec(), attackers=(AttributeAttacker.LOGISTIC,))  # the sweep's logic, not the attackers'
    result = probe_attribute_sweep(_encode, data, split, "all", spec=spec, progress=False)
    assert {r.name for r in result.rows} == {"Shown", "Hidden", "FollowsTask"}  # not the task, not identity
    shown, hidden, follows = result.row("Shown"), result.row("Hidden"), result.row("FollowsTask")
    assert shown.balanced_accuracy > 0.95 and shown.excess > 0.4
    assert abs(hidden.balanced_accuracy - 0.5) < 0.06 and hidden.excess < 0.03
    assert hidden.null is not None and 0.45 < hidden.null < 0.6
    assert follows.task_floor > 0.85 and follows.balanced_accuracy > 0.85 and follows.excess < 0.03
    assert result.worst.name == "Shown"
    assert [r.name for r in result.over(0.1)] == ["Shown"]
    again = AttributeSweepResult.load(result.save(tmp_path / "sweep.json"))
    assert again == result
    assert "Shown" in result.summary().splitlines()[2]  # worst first


def test_attribute_names_are_checked():
    data = _faces(n=200)
    assert resolve_attributes(data, "Hidden, Shown") == ("Hidden", "Shown")
    with pytest.raises(ConfigError, match="Beard.*not a two-class label.*choose from"):
        resolve_attributes(data, "Beard")
    with pytest.raises(ConfigError, match="Smiling"):
        resolve_attributes(data, "Smiling")
    with pytest.raises(ConfigError, match="names no attribute"):
        resolve_attributes(data, " , ")
