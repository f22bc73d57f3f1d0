"""The augmentation (label-only) and offline-LiRA membership attacks on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from privsplit.errors import ConfigError
from privsplit.probes.calibrated_attacks import (
    DEFAULT_AUGMENTATIONS,
    Augmentation,
    augment,
    augmentation_score,
    lira_offline_score,
    scaled_confidence,
)
from privsplit.probes.membership import Attack, ExtraQueries, ScoredRecords, ShadowData, run_attacks


def test_augment_flips_and_shifts_with_zero_fill():
    img = np.arange(1, 17, dtype=np.uint8).reshape(1, 4, 4, 1)
    down = augment(img, Augmentation(dy=1))[0, :, :, 0]
    assert (down[0] == 0).all() and (down[1:] == img[0, :3, :, 0]).all()
    left = augment(img, Augmentation(dx=-2))[0, :, :, 0]
    assert (left[:, :2] == img[0, :, 2:, 0]).all() and (left[:, 2:] == 0).all()
    flipped = augment(img, Augmentation(flip=True))[0, :, :, 0]
    assert (flipped == img[0, :, ::-1, 0]).all()
    assert len({a.name for a in DEFAULT_AUGMENTATIONS}) == len(DEFAULT_AUGMENTATIONS) == 10
    with pytest.raises(ConfigError, match="leaves nothing"):
        augment(img, Augmentation(dx=4))


def test_augmentation_score_counts_right_labels():
    labels = np.array([0, 1])
    probs = np.zeros((4, 2, 3))
    probs[:, 0, 0] = 1.0  # record 0: right on all 4 copies
    probs[:2, 1, 1], probs[2:, 1, 2] = 1.0, 1.0  # record 1: right on 2 of 4
    np.testing.assert_allclose(augmentation_score(probs, labels), [1.0, 0.5])


def test_scaled_confidence_is_stable_near_one():
    p = np.array([[1 - 1e-9, 1e-9, 0.0]], dtype=np.float64)
    assert scaled_confidence(p, np.array([0]))[0] == pytest.approx(np.log(1 - 1e-9) - np.log(1e-9), rel=1e-6)


def test_lira_offline_calibrates_per_record():
    """Record 0 is easy for everyone (high out-confidence), record 1 hard: LiRA ranks by the gap."""
    labels = np.array([0, 0])
    target = np.array([[0.99, 0.01], [0.9, 0.1]])  # the target is more confident on record 0 ...
    shadows = np.stack([np.array([[0.995, 0.005], [0.3, 0.7]]) * 1.0 for _ in range(5)])
    shadows[:, 0] += np.linspace(-1e-3, 1e-3, 5)[:, None] * np.array([1, -1])
    shadows[:, 1] += np.linspace(-0.05, 0.05, 5)[:, None] * np.array([1, -1])
    s = lira_offline_score(target, shadows, labels)
    assert s[1] > s[0]  # ... but record 1 is far above what models that never saw it return


def _records(probs: np.ndarray, labels: np.ndarray) -> ScoredRecords:
    return ScoredRecords(probs.astype(np.float32), labels)


def test_run_attacks_uses_extra_queries_only_when_given():
    rng = np.random.default_rng(0)
    k, n = 4, 40
    probs = rng.dirichlet(np.ones(k), size=2 * n)
    labels = probs.argmax(1)
    m, nm = _records(probs[:n], labels[:n]), _records(probs[n:], labels[n:])
    shadow = ShadowData(_records(probs[:10], labels[:10]), _records(probs[10:20], labels[10:20]))
    plain = run_attacks(m, nm, shadow, seed=0)
    assert Attack.AUGMENTATION not in plain and Attack.LIRA_OFFLINE not in plain
    aug = np.repeat(probs[None], 3, axis=0)
    aug[:, n:] = np.roll(aug[:, n:], 1, axis=2)  # every non-member copy wrong, every member copy right
    out = run_attacks(m, nm, shadow, extra=ExtraQueries(augmented=aug, shadow=probs[None]), seed=0)
    assert out[Attack.AUGMENTATION].metrics.auc == 1.0
    assert Attack.LIRA_OFFLINE in out and Attack.AUGMENTATION.label_only and not Attack.LIRA_OFFLINE.label_only
