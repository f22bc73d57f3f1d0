"""The guards of `privsplit train` (issue 26): an identity guard and an attribute guard, each shown on a case where
what they remove is large and known.

The case: digits at 16 px (task: the digit) with a stamp in the top-left corner: 8 bits, one code per person, 100
people with 8 images each. The stamp says nothing about the digit, so an encoder that keeps it keeps it for free:
without a guard the features link two images of one person, and the stamp's bits are attributes the task never
named. The bits are exposed as the binary labels ``bit0`` .. ``bit7`` and the person as ``identity``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import tiny_digits_model  # noqa: E402

from privsplit.data import Part, SplitFractions, load_dataset, make_split  # noqa: E402
from privsplit.data.dataset import LabeledImages  # noqa: E402
from privsplit.data.spec import register_loader  # noqa: E402
from privsplit.errors import ConfigError  # noqa: E402
from privsplit.probes.linkage import LinkageSpec, probe_linkage  # noqa: E402
from privsplit.train import TrainConfig  # noqa: E402
from privsplit.train.adversarial import accuracy, linear_attack  # noqa: E402
from privsplit.train.guards import (  # noqa: E402
    DEFAULT_ATTRIBUTES_WEIGHT,
    attribute_prior,
    attributes_weight,
    describe_guards,
    guard_labels,
    guarded_attributes,
    pair_batches,
    positive_weight,
    resolve_guards,
)
from privsplit.train.loop import train_split_model  # noqa: E402

PEOPLE, BITS = 100, 8


@register_loader("digits-stamped", default_image_size=16, needs_path=False, help="test: digits + a per-person stamp")
def _load_digits_stamped(path, *, image_size: int, limit: int | None) -> LabeledImages:
    from privsplit.data.digits import load_digits

    base = load_digits(None, image_size=image_size, limit=limit)
    rng = np.random.default_rng(0)
    person = rng.permutation(np.arange(len(base.images)) % PEOPLE)
    codes = rng.integers(0, 2, size=(PEOPLE, BITS))
    images = base.images.copy()
    stamp = codes[person].reshape(-1, 2, 4) * 255  # 2 x 4 pixels in the corner
    images[:, :2, :4, 0] = stamp.astype(np.uint8)
    labels = dict(base.labels) | {"identity": person.astype(np.int64)}
    classes = dict(base.classes) | {"identity": tuple(str(i) for i in range(PEOPLE))}
    for b in range(BITS):
        labels[f"bit{b}"] = codes[person, b].astype(np.int64)
        classes[f"bit{b}"] = (f"not_bit{b}", f"bit{b}")
    return LabeledImages(images, labels, classes, "digits-stamped", default_task="digit")


@pytest.fixture(scope="module")
def stamped():
    data = load_dataset("digits-stamped", image_size=16, limit=800)
    return data, make_split(len(data), SplitFractions(), seed=0)


def _model():
    return tiny_digits_model(feature_channels=4, noise_sigma=0.3)


def _train(stamped, **changes):
    data, split = stamped
    base = dict(
        epochs=8,
        warmup_epochs=2,
        head_finetune_epochs=0,
        batch_size=64,
        adversaries=("linear",),
        adv_steps=2,
        adv_warmup_steps=20,
        distill_weight=0.0,
        adv_weight=0.0,
        noise_sigma=0.3,
    )
    config = TrainConfig(**{**base, **changes})
    result = train_split_model(_model(), data, split, config, seed=0, progress=False)
    model = result.model
    rows = np.arange(len(data))
    with torch.no_grad():
        z = model.features(model.preprocess(data.images[rows]), generator=torch.Generator().manual_seed(1))
    hold = split[Part.HOLDOUT]
    x, y = model.preprocess(data.images[hold]), torch.as_tensor(data.task_labels[hold])
    return z.flatten(1).numpy(), accuracy(model, x, y), result


def _linkage_auc(stamped, z) -> float:
    data, _ = stamped
    return probe_linkage(z, np.asarray(data.labels["identity"]), LinkageSpec(null=False)).best.auc


def _bits_read(stamped, z) -> float:
    """The mean balanced accuracy of a fresh logistic regression per stamp bit, fitted on members, read on holdout."""
    data, split = stamped
    train, test = split[Part.MEMBERS], split[Part.HOLDOUT]
    zt = torch.as_tensor(z)
    scores = []
    for b in range(BITS):
        s = torch.as_tensor(np.asarray(data.labels[f"bit{b}"]))
        scores.append(linear_attack(zt[train], s[train], zt[test], s[test], 2))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def unguarded(stamped):
    return _train(stamped)


def test_identity_guard_lowers_linkage_at_equal_task_accuracy(stamped, unguarded):
    z_plain, acc_plain, _ = unguarded
    z_guard, acc_guard, result = _train(stamped, identity_weight=3.0)
    plain, guarded = _linkage_auc(stamped, z_plain), _linkage_auc(stamped, z_guard)
    assert plain > 0.75, plain  # the stamp links: the case has linkage to remove
    assert guarded < plain - 0.10, (plain, guarded)
    assert acc_guard > acc_plain - 0.05, (acc_plain, acc_guard)
    nce = [h.identity_guard_loss for h in result.history]
    assert nce[:2] == [None, None] and all(v is not None and v > 0 for v in nce[2:])  # the guard joins after warm-up


def test_attribute_guard_lowers_every_other_attribute_at_equal_task_accuracy(stamped, unguarded):
    z_plain, acc_plain, _ = unguarded
    z_guard, acc_guard, result = _train(
        stamped, attributes_weight=3.0, guard_attributes="all", adversaries=("linear", "mlp")
    )
    plain, guarded = _bits_read(stamped, z_plain), _bits_read(stamped, z_guard)
    assert plain > 0.75, plain
    assert guarded < plain - 0.10, (plain, guarded)
    assert acc_guard > acc_plain - 0.05, (acc_plain, acc_guard)
    assert all(h.attributes_guard_loss is not None for h in result.history[2:])


def test_pair_batches_hold_same_person_pairs_and_every_member_once():
    rng = np.random.default_rng(3)
    identity = rng.integers(0, 40, size=301)
    batches, pairs = pair_batches(identity, 32, np.random.default_rng(0))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(301))  # each member exactly once
    counts = np.bincount(identity)
    assert sum(pairs) == sum(c // 2 for c in counts)
    for batch, p in zip(batches, pairs):
        head = identity[batch[: 2 * p]]
        assert (head[0::2] == head[1::2]).all()
        assert len(set(batch[: 2 * p].tolist())) == 2 * p


def test_attribute_prior_is_the_attribute_rate_within_each_task_class():
    task = np.array([0, 0, 0, 1, 1])
    attrs = np.array([[1, 0], [1, 0], [0, 0], [1, 1], [1, 1]], dtype=np.float32)
    prior = attribute_prior(task, attrs, 2).numpy()
    assert prior[0] == pytest.approx([3 / 5, 1 / 5])  # add-one smoothed: (2 + 1) / (3 + 2)
    assert prior[1] == pytest.approx([3 / 4, 3 / 4])


def test_balanced_prior_is_what_a_class_weighted_adversary_outputs_on_task_only_features():
    rng = np.random.default_rng(0)
    task = rng.integers(0, 2, size=4000)
    hat = (rng.random(4000) < np.where(task == 1, 0.08, 0.03)).astype(np.float32)[:, None]  # rare, task-tied
    prior = attribute_prior(task, hat, 2, balanced=True)
    weight = positive_weight(hat)
    rate = (hat.sum() + 1) / (len(hat) + 2)
    assert float(weight[0]) == pytest.approx((1 - rate) / rate)
    # the weighted cross-entropy's minimiser within each task class, found numerically, is the balanced prior
    q = torch.linspace(0.001, 0.999, 9999)
    for t in (0, 1):
        p = hat[task == t, 0].mean()
        loss = -(float(weight[0]) * p * torch.log(q) + (1 - p) * torch.log(1 - q))
        assert float(q[loss.argmin()]) == pytest.approx(float(prior[t, 0]), abs=0.01)
    # a rare attribute's balanced prior sits around 0.5, not at its 5% rate: both classes count alike
    plain = attribute_prior(task, hat, 2)
    assert float(plain.max()) < 0.1 and 0.3 < float(prior[0, 0]) < float(prior[1, 0]) < 0.7


def test_configs_of_the_first_guards_read_unweighted_and_new_ones_balanced():
    assert TrainConfig().attributes_balanced is True
    first = TrainConfig(attributes_weight=1.0).to_json()
    del first["attributes_balanced"]  # what the first guarded runs wrote (December 2026)
    assert TrainConfig.from_json(first).attributes_balanced is False
    assert TrainConfig.from_json(TrainConfig(attributes_weight=1.0).to_json()).attributes_balanced is True
    unweighted = TrainConfig(attributes_weight=3.0, attributes_balanced=False).to_json()
    assert TrainConfig.from_json(unweighted).attributes_balanced is False
    assert "attributes_balanced" not in TrainConfig.unprotected().to_json()


def test_cli_sets_the_guard_balance(tmp_path):
    from privsplit.cli.main import build_parser
    from privsplit.cli.train import build_config

    parse = build_parser().parse_args
    base = ["train", "--data", "celeba:x", "--out", str(tmp_path)]
    assert build_config(parse(base)).attributes_balanced is True
    assert build_config(parse([*base, "--no-attributes-balanced"])).attributes_balanced is False


def test_guarded_attributes_leave_out_the_task_the_private_attribute_and_identity(stamped):
    data, _ = stamped
    names = guarded_attributes(data.labels, data.classes, choice="all", exclude=("digit", "bit0"))
    assert {f"bit{b}" for b in range(1, BITS)} <= set(names)  # every binary label (digits' slant too) ...
    assert not {"digit", "bit0", "identity"} & set(names)  # ... but the task, the private one and identity
    assert guarded_attributes(data.labels, data.classes, choice="bit2,bit3", exclude=()) == ("bit2", "bit3")
    with pytest.raises(ConfigError, match="choose 'all' or from"):
        guarded_attributes(data.labels, data.classes, choice="bit2,Smiling", exclude=())


def test_identity_guard_on_data_without_identities_is_refused():
    data = load_dataset("digits", image_size=16, limit=100)
    with pytest.raises(ConfigError, match="needs identities .* drop --identity-weight"):
        guard_labels(data, TrainConfig(identity_weight=1.0))
    with pytest.raises(ConfigError, match="choose 'all' or from"):
        guard_labels(data, TrainConfig(attributes_weight=1.0, guard_attributes="Smiling"))
    assert guard_labels(data, TrainConfig()) is None


def test_attribute_guard_is_on_by_default_where_there_is_a_private_attribute_and_others_to_guard(stamped):
    data, _ = stamped
    assert attributes_weight(data, TrainConfig()) == 0.0  # no --private: the presets add no guard
    private = load_dataset("digits-stamped", private="bit0", image_size=16, limit=200)
    labels = guard_labels(private, TrainConfig())
    assert labels is not None and labels.attributes_weight == DEFAULT_ATTRIBUTES_WEIGHT == 3.0
    assert set(labels.names) == {f"bit{b}" for b in range(1, BITS)} | {"slant"}
    assert resolve_guards(private, TrainConfig()).attributes_weight == 3.0  # what the run records
    assert "attribute guard on 8 labels (weight 3)" in describe_guards(labels)
    assert guard_labels(private, TrainConfig(attributes_weight=0.0)) is None  # 0 turns it off
    assert TrainConfig.unprotected().attributes_weight == 0.0
    from privsplit.train.membership_defense import MembershipDefense

    dp = TrainConfig(membership_defense=MembershipDefense.parse("dp-sgd"), head_finetune_epochs=0)
    assert attributes_weight(private, dp) == 0.0  # DP-SGD's own loop trains no adversaries: recorded as off
    with pytest.raises(ConfigError, match="dp-sgd trains no guards .* drop --attributes-weight"):
        dp.with_(attributes_weight=1.0)  # asked for: refused, not ignored
    digits = load_dataset("digits", private="slant", image_size=16, limit=100)  # nothing else to guard: off
    assert guard_labels(digits, TrainConfig()) is None and describe_guards(None) == "no guards"
    with pytest.raises(ConfigError, match="no binary attribute besides .* drop --attributes-weight"):
        guard_labels(digits, TrainConfig(attributes_weight=2.0))  # asked for: refused, not ignored


def test_config_without_guards_is_written_as_earlier_versions_and_old_configs_read_unguarded():
    plain = TrainConfig(attributes_weight=0.0).to_json()
    assert not {"attributes_weight", "identity_weight", "guard_attributes"} & set(plain)
    guarded = TrainConfig(identity_weight=2.0).to_json()
    assert guarded["identity_weight"] == 2.0 and guarded["attributes_weight"] is None  # auto, decided per run
    back = TrainConfig.from_json(json.loads(json.dumps(guarded)))
    assert back == TrainConfig(identity_weight=2.0)
    assert TrainConfig.from_json(plain).identity_weight == 0.0
    with pytest.raises(ConfigError, match="identity-weight must be >= 0"):
        TrainConfig(identity_weight=-1.0)


def test_cli_refuses_the_identity_guard_on_digits_in_one_line(tmp_path, capsys):
    from privsplit.cli.main import main

    code = main(["train", "--data", "digits", "--limit", "100", "--out", str(tmp_path / "r"), "--identity-weight", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "drop --identity-weight" in err[0], err
