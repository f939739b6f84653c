"""Tests of the dirty-label and clean-label poisoning attacks."""

import numpy as np
import pytest

from mexp_lib import poisoning
from mexp_lib.data import ImageSet
from mexp_lib.poisoning import CraftingConfig

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(NUM_CLASSES), 12)
    images = rng.integers(0, 256, size=(len(labels), 16, 16, 3), dtype=np.uint8)
    images[:5] = 0  # black images: the attack must still be able to move pixels off 0
    return ImageSet(images, labels, tuple("abcd"), "toy/pool")


def test_budget_split_keeps_one_class_share():
    assert poisoning.split_budget(1000, 10) == (900, 100)
    assert poisoning.split_budget(100, 10) == (90, 10)
    assert poisoning.split_budget(9, 4) == (7, 2)


def test_dirty_label_never_uses_target_label(pool):
    for target in range(NUM_CLASSES):
        result = poisoning.dirty_label(pool, target_class=target, budget=12, seed=target)
        assert (result.labels[result.is_poison] != target).all()
        assert (result.labels[~result.is_poison] == target).all()
        assert (result.true_labels == target).all()


def test_dirty_label_sizes_and_distinct_images(pool):
    result = poisoning.dirty_label(pool, target_class=1, budget=12, seed=0)
    assert len(result) == 12
    assert result.is_poison.sum() == 9
    assert len(set(result.pool_index)) == 12
    np.testing.assert_array_equal(result.images, pool.images[result.pool_index])


def test_budget_above_pool_raises(pool):
    with pytest.raises(ValueError, match="b_poison=13 exceeds the 12 images"):
        poisoning.dirty_label(pool, target_class=0, budget=13, seed=0)


def test_budget_below_class_count_raises(pool):
    with pytest.raises(ValueError, match="b_poison=3"):
        poisoning.dirty_label(pool, target_class=0, budget=3, seed=0)


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5])
def test_eps_out_of_range_raises(eps):
    with pytest.raises(ValueError, match="eps must lie in"):
        CraftingConfig(eps=eps)


@pytest.fixture(scope="module")
def clean_label_set(pool, lite0):
    config = CraftingConfig(iterations=25, lr=0.05, decay_every=10)
    return poisoning.clean_label(pool, lite0, target_class=2, budget=12, seed=0, config=config,
                                 progress=False)


def test_clean_label_within_eps(pool, clean_label_set):
    poisons = clean_label_set.poisons
    seeds = pool.images[clean_label_set.pool_index[poisons]].astype(int)
    difference = np.abs(clean_label_set.images[poisons].astype(int) - seeds)
    assert difference.max() <= 16
    assert difference.max() > 0


def test_clean_label_moves_black_pixels(pool, lite0):
    config = CraftingConfig(iterations=10, lr=0.1)
    black = pool.images[:3]
    poisons = poisoning.craft_feature_collisions(lite0, black, pool.images[30:33], config=config,
                                                 device=None, progress=False)
    assert poisons.max() > 0


def test_clean_label_reduces_feature_distance(clean_label_set):
    poisons = clean_label_set.poisons
    before = clean_label_set.distance_before[poisons]
    after = clean_label_set.distance_after[poisons]
    assert after.mean() < 0.9 * before.mean()


def test_clean_label_keeps_true_labels(pool, clean_label_set):
    np.testing.assert_array_equal(clean_label_set.labels, clean_label_set.true_labels)
    poisons = clean_label_set.poisons
    assert (clean_label_set.labels[poisons] != 2).all()
    assert (pool.labels[clean_label_set.base_index[poisons]] == 2).all()
    counts = np.bincount(clean_label_set.labels[poisons], minlength=NUM_CLASSES)
    assert counts.max() - counts[[0, 1, 3]].min() <= 1  # seeds balanced over other classes


def test_stored_set_round_trip(tmp_path, pool, clean_label_set):
    path = clean_label_set.save(tmp_path / "set.npz")
    loaded = poisoning.PoisoningSet.load(path)
    np.testing.assert_array_equal(loaded.images, clean_label_set.images)
    assert loaded.attack == "clean_label"
    assert loaded.target_class == 2


def test_make_poisoning_set_reuses_store(tmp_path, pool):
    first = poisoning.make_poisoning_set("dirty_label", pool, target_class=0, budget=8, seed=1,
                                         store_dir=tmp_path)
    path = poisoning.poisoning_set_path("dirty_label", pool, target_class=0, budget=8, seed=1,
                                        store_dir=tmp_path)
    assert path.exists()
    again = poisoning.make_poisoning_set("dirty_label", pool, target_class=0, budget=8, seed=1,
                                         store_dir=tmp_path)
    np.testing.assert_array_equal(first.labels, again.labels)
    other = poisoning.poisoning_set_path("dirty_label", pool, target_class=0, budget=8, seed=2,
                                         store_dir=tmp_path)
    assert other != path


def test_unknown_attack_raises(pool):
    with pytest.raises(ValueError, match="unknown attack 'label_flip'"):
        poisoning.make_poisoning_set("label_flip", pool, target_class=0, budget=8, seed=0)
