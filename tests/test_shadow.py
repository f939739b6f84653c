"""Tests of the shadow-model pipeline behind LiRA."""

import numpy as np
import pytest

from mexp_lib import shadow
from mexp_lib.experiment import (GROUP_BALANCING, GROUP_MEMBER, GROUP_POISON, TrainingData,
                                 check_target_classes)


def test_in_masks_balanced_per_sample():
    masks = shadow.balanced_in_masks(50, 8, seed=3)
    assert masks.shape == (8, 50)
    np.testing.assert_array_equal(masks.sum(axis=0), np.full(50, 4))


def test_in_masks_deterministic_for_seed():
    first = shadow.balanced_in_masks(30, 6, seed=1)
    np.testing.assert_array_equal(first, shadow.balanced_in_masks(30, 6, seed=1))
    assert not np.array_equal(first, shadow.balanced_in_masks(30, 6, seed=2))


def test_in_masks_reject_too_few_models():
    with pytest.raises(ValueError, match="n_shadow must be at least 4"):
        shadow.balanced_in_masks(10, 3, seed=0)


def _random_label_task(seed=0, per_class=30, num_classes=3, dim=24, poisons=6):
    """Members and non-members with random labels: only memorisation separates them."""
    rng = np.random.default_rng(seed)
    size = per_class * num_classes
    member_labels = np.repeat(np.arange(num_classes), per_class)
    nonmember_labels = member_labels.copy()
    poison_labels = rng.integers(1, num_classes, size=poisons)
    training = TrainingData(
        features=rng.normal(size=(size + poisons, dim)).astype(np.float32),
        labels=np.concatenate([member_labels, poison_labels]),
        groups=np.concatenate([np.full(size, GROUP_MEMBER), np.full(poisons - 1, GROUP_POISON),
                               [GROUP_BALANCING]]),
    )
    nonmember_features = rng.normal(size=(size, dim)).astype(np.float32)
    return training, nonmember_features, nonmember_labels


def test_shadows_train_on_every_poison(monkeypatch):
    training, nonmember_features, nonmember_labels = _random_label_task()
    recorded = {}
    original = shadow.train_heads

    def record(*args, **kwargs):
        recorded["masks"] = kwargs["train_masks"]
        return original(*args, **kwargs)

    monkeypatch.setattr(shadow, "train_heads", record)
    run = shadow.run_shadow_models(training, nonmember_features, nonmember_labels,
                                   num_classes=3, n_shadow=4, seed=0, epochs=1, progress=False)
    population = len(run.population_labels)
    masks = recorded["masks"]
    assert masks[:, population:].all()
    np.testing.assert_array_equal(masks[:, :population], run.shadow_in)


def test_run_shapes_and_membership_flags():
    training, nonmember_features, nonmember_labels = _random_label_task()
    run = shadow.run_shadow_models(training, nonmember_features, nonmember_labels,
                                   num_classes=3, n_shadow=4, seed=0, epochs=1, progress=False)
    assert run.target_logits.shape == (180, 3)
    assert run.shadow_logits.shape == (4, 180, 3)
    assert run.is_member.sum() == 90
    assert run.is_member[:90].all()


def test_lira_detects_memorised_members():
    training, nonmember_features, nonmember_labels = _random_label_task(per_class=40, dim=64)
    run = shadow.run_shadow_models(training, nonmember_features, nonmember_labels,
                                   num_classes=3, n_shadow=8, seed=0, epochs=60, batch_size=20,
                                   lr=3e-3, progress=False)
    metrics = shadow.evaluate_lira(run, target_class=0)
    assert metrics["lira_online_auc"] > 0.8
    assert metrics["lira_offline_auc"] > 0.7
    assert metrics["test_accuracy"] < 0.6  # random labels cannot generalise


def test_stored_run_reused_and_keyed_by_settings(tmp_path):
    training, nonmember_features, nonmember_labels = _random_label_task()
    settings = dict(num_classes=3, n_shadow=4, seed=0, epochs=1, progress=False)
    first = shadow.load_or_run_shadow_models(tmp_path, training, nonmember_features,
                                             nonmember_labels, name="run", **settings)
    again = shadow.load_or_run_shadow_models(tmp_path, training, nonmember_features,
                                             nonmember_labels, name="run", **settings)
    np.testing.assert_array_equal(first.shadow_logits, again.shadow_logits)
    assert len(list(tmp_path.glob("run-*.npz"))) == 1
    shadow.load_or_run_shadow_models(tmp_path, training, nonmember_features, nonmember_labels,
                                     name="run", **{**settings, "n_shadow": 6})
    assert len(list(tmp_path.glob("run-*.npz"))) == 2


@pytest.mark.parametrize("classes", [[42], [], 3, [0, -1]])
def test_invalid_target_classes_raise(classes):
    with pytest.raises(ValueError, match="target_classes"):
        check_target_classes(classes, num_classes=10, dataset="mnist5k")
