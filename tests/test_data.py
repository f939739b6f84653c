"""Tests for mexp_lib.data: dataset loading and the study's balanced, disjoint splits."""

from __future__ import annotations

import logging
import urllib.error
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mexp_lib import data
from mexp_lib.data import ImageSet, load_source, make_splits

CIFAR_CLASSES = ("airplane", "automobile", "bird")


@pytest.fixture(scope="module")
def mnist_splits() -> data.Splits:
    return make_splits("mnist5k", members_per_class=7, nonmembers_per_class=5,
                       pool_per_class=3, seed=0)


@pytest.fixture
def cifar_tree(tmp_path, write_image_folder):
    """A cifar10 ImageFolder tree: 6 train and 4 test images of each of 3 classes."""
    written = write_image_folder(tmp_path, "cifar10", {
        "train": {name: 6 for name in CIFAR_CLASSES},
        "test": {name: 4 for name in CIFAR_CLASSES},
    })
    return tmp_path, written


# --------------------------------------------------------------------------- mnist5k


def test_mnist5k_source_shape_and_balance():
    source = load_source("mnist5k", "train")
    images = source.read(np.arange(3))

    assert source.name == "mnist5k/train"
    assert source.class_names == tuple(str(digit) for digit in range(10))
    assert np.bincount(source.labels).tolist() == [500] * 10
    assert images.shape == (3, 28, 28, 1)
    assert images.dtype == np.uint8


def test_make_splits_sizes_per_class(mnist_splits):
    assert mnist_splits.members.class_counts().tolist() == [7] * 10
    assert mnist_splits.nonmembers.class_counts().tolist() == [5] * 10
    assert mnist_splits.pool.class_counts().tolist() == [3] * 10


def test_make_splits_part_names_and_classes(mnist_splits):
    assert mnist_splits.members.name == "mnist5k/members"
    assert mnist_splits.nonmembers.name == "mnist5k/nonmembers"
    assert mnist_splits.pool.name == "mnist5k/pool"
    assert mnist_splits.class_names == tuple(str(digit) for digit in range(10))
    assert mnist_splits.pool.class_names == mnist_splits.class_names
    assert mnist_splits.num_classes == 10


def test_make_splits_labels_match_images(mnist_splits, row_keys):
    # Every drawn image must carry the label it has in the source.
    source = load_source("mnist5k", "train")
    labels_by_key: dict[bytes, set[int]] = {}
    for key, label in zip(row_keys(source.read(np.arange(len(source.labels)))), source.labels):
        labels_by_key.setdefault(key, set()).add(int(label))

    for part in (mnist_splits.members, mnist_splits.nonmembers, mnist_splits.pool):
        for key, label in zip(row_keys(part.images), part.labels):
            assert int(label) in labels_by_key[key], part.name


def test_make_splits_mnist5k_parts_disjoint(mnist_splits, row_keys):
    # MNIST-5k may contain duplicate images, so compare multisets. No image may be
    # drawn more often than the source contains it.
    source = load_source("mnist5k", "train")
    available = Counter(row_keys(source.read(np.arange(len(source.labels)))))
    drawn = Counter(row_keys(mnist_splits.members.images))
    drawn.update(row_keys(mnist_splits.nonmembers.images))
    drawn.update(row_keys(mnist_splits.pool.images))

    overdrawn = {key: count for key, count in drawn.items() if count > available[key]}
    assert not overdrawn
    assert sum(drawn.values()) == 10 * (7 + 5 + 3)


def test_make_splits_one_split_disjoint(tmp_path, write_image_folder, row_keys):
    # CelebA draws all three parts from its train split, so unique images show any overlap.
    write_image_folder(tmp_path, "celeba", {"train": {"no": 15, "yes": 15}})

    splits = make_splits("celeba", members_per_class=6, nonmembers_per_class=5,
                         pool_per_class=4, seed=3, root=tmp_path)
    members = set(row_keys(splits.members.images))
    nonmembers = set(row_keys(splits.nonmembers.images))
    pool = set(row_keys(splits.pool.images))

    assert len(members) == 12
    assert len(nonmembers) == 10
    assert len(pool) == 8
    assert not members & nonmembers
    assert not members & pool
    assert not nonmembers & pool


def test_make_splits_same_seed_identical():
    first = make_splits("mnist5k", members_per_class=4, nonmembers_per_class=4,
                        pool_per_class=4, seed=11)
    second = make_splits("mnist5k", members_per_class=4, nonmembers_per_class=4,
                         pool_per_class=4, seed=11)

    for part in ("members", "nonmembers", "pool"):
        np.testing.assert_array_equal(getattr(first, part).images,
                                      getattr(second, part).images)
        np.testing.assert_array_equal(getattr(first, part).labels,
                                      getattr(second, part).labels)


def test_make_splits_other_seed_differs():
    first = make_splits("mnist5k", members_per_class=4, nonmembers_per_class=4,
                        pool_per_class=4, seed=11)
    second = make_splits("mnist5k", members_per_class=4, nonmembers_per_class=4,
                         pool_per_class=4, seed=12)

    assert not np.array_equal(first.members.images, second.members.images)
    assert not np.array_equal(first.nonmembers.images, second.nonmembers.images)
    assert not np.array_equal(first.pool.images, second.pool.images)


@pytest.mark.parametrize(("sizes", "named"), [
    ((501, 1, 1), "501"),
    ((300, 201, 1), "201"),
    ((300, 100, 101), "101"),
])
def test_make_splits_too_large_raises(sizes, named):
    members, nonmembers, pool = sizes

    with pytest.raises(ValueError, match=named):
        make_splits("mnist5k", members_per_class=members, nonmembers_per_class=nonmembers,
                    pool_per_class=pool, seed=0)


@pytest.mark.parametrize("argument", ["members_per_class", "nonmembers_per_class",
                                      "pool_per_class"])
def test_make_splits_zero_size_raises(argument):
    sizes = {"members_per_class": 1, "nonmembers_per_class": 1, "pool_per_class": 1}
    sizes[argument] = 0

    with pytest.raises(ValueError, match=argument):
        make_splits("mnist5k", seed=0, **sizes)


def test_make_splits_unknown_dataset_raises():
    with pytest.raises(ValueError, match="imagenet") as raised:
        make_splits("imagenet", members_per_class=1, nonmembers_per_class=1,
                    pool_per_class=1, seed=0)

    for name in data.DATASETS:
        assert name in str(raised.value)


def test_load_source_unknown_split_raises():
    with pytest.raises(ValueError, match="'test'"):
        load_source("mnist5k", "test")


def test_make_splits_digits_pool(row_keys):
    splits = make_splits("mnist5k", members_per_class=3, nonmembers_per_class=3,
                         pool_per_class=5, seed=0, pool_dataset="digits")
    digits = load_source("digits", "train")
    digit_labels: dict[bytes, set[int]] = {}
    for key, label in zip(row_keys(digits.read(np.arange(len(digits.labels)))), digits.labels):
        digit_labels.setdefault(key, set()).add(int(label))

    assert splits.pool.images.shape == (50, 8, 8, 1)
    assert splits.pool.class_counts().tolist() == [5] * 10
    assert splits.pool.class_names == splits.members.class_names
    assert splits.members.images.shape[1:] == (28, 28, 1)
    for key, label in zip(row_keys(splits.pool.images), splits.pool.labels):
        assert int(label) in digit_labels[key]


def test_digits_scaled_to_uint8_range():
    images = load_source("digits", "train").read(np.arange(200))

    assert images.dtype == np.uint8
    assert images.max() == 255
    assert images.min() == 0


# --------------------------------------------------------------------------- ImageFolder


def test_load_source_image_folder(cifar_tree):
    root, written = cifar_tree

    source = load_source("cifar10", "train", root=root)
    images = source.read(np.arange(len(source.labels)))
    expected = np.concatenate([written["train"][name] for name in CIFAR_CLASSES])

    assert source.name == "cifar10/train"
    assert source.class_names == CIFAR_CLASSES
    assert source.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert source.labels.dtype == np.int64
    np.testing.assert_array_equal(images, expected)


def test_load_source_grayscale_folder(tmp_path, write_image_folder):
    written = write_image_folder(tmp_path, "mnist", {"train": {"0": 2, "1": 3}},
                                 grayscale=True)

    source = load_source("mnist", "train", root=tmp_path)
    images = source.read(np.arange(len(source.labels)))

    assert images.shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(images[:2], written["train"]["0"])


def test_load_source_mixed_sizes_raises(tmp_path):
    folder = tmp_path / "cifar10" / "train" / "bird"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(folder / "b.png")

    with pytest.raises(ValueError, match="differ in size"):
        load_source("cifar10", "train", root=tmp_path)


def test_make_splits_pool_from_test_split(cifar_tree, row_keys):
    root, written = cifar_tree
    train = set(row_keys(np.concatenate(list(written["train"].values()))))
    test = set(row_keys(np.concatenate(list(written["test"].values()))))

    splits = make_splits("cifar10", members_per_class=3, nonmembers_per_class=3,
                         pool_per_class=4, seed=0, root=root)
    members = set(row_keys(splits.members.images))
    nonmembers = set(row_keys(splits.nonmembers.images))
    pool = set(row_keys(splits.pool.images))

    assert members <= train
    assert nonmembers <= train
    assert not members & nonmembers
    assert pool == test
    assert splits.pool.class_counts().tolist() == [4, 4, 4]


def test_make_splits_pool_tops_up(tmp_path, write_image_folder, row_keys):
    # STL-10's pool takes train images first, then test images.
    written = write_image_folder(tmp_path, "stl10", {
        "train": {"a": 6, "b": 6},
        "test": {"a": 5, "b": 5},
    })
    train = set(row_keys(np.concatenate(list(written["train"].values()))))

    splits = make_splits("stl10", members_per_class=4, nonmembers_per_class=3,
                         pool_per_class=4, seed=0, root=tmp_path)
    members = set(row_keys(splits.members.images))
    nonmembers = set(row_keys(splits.nonmembers.images))
    pool = set(row_keys(splits.pool.images))

    assert splits.pool.class_counts().tolist() == [4, 4]
    assert len(pool) == 8
    assert len(pool & train) == 4
    assert not pool & members
    assert not pool & nonmembers


def test_make_splits_pool_exhausted_raises(tmp_path, write_image_folder):
    write_image_folder(tmp_path, "stl10", {"train": {"a": 6, "b": 6}, "test": {"a": 5, "b": 5}})

    with pytest.raises(ValueError, match="pool_per_class"):
        make_splits("stl10", members_per_class=4, nonmembers_per_class=3, pool_per_class=5,
                    seed=0, root=tmp_path)


def test_make_splits_pool_dataset_maps_names(tmp_path, write_image_folder, row_keys, caplog):
    write_image_folder(tmp_path, "cifar10", {"train": {name: 6 for name in CIFAR_CLASSES},
                                             "test": {name: 2 for name in CIFAR_CLASSES}})
    stl = write_image_folder(tmp_path, "stl10", {
        "train": {"airplane": 3, "car": 3, "monkey": 3},
        "test": {"airplane": 2, "car": 2, "monkey": 2},
    }, seed=1)
    cars = set(row_keys(np.concatenate([stl["train"]["car"], stl["test"]["car"]])))

    with caplog.at_level(logging.WARNING, logger="mexp_lib.data"):
        splits = make_splits("cifar10", members_per_class=2, nonmembers_per_class=2,
                             pool_per_class=4, seed=0, root=tmp_path, pool_dataset="stl10")
    automobiles = splits.pool.images[splits.pool.labels == CIFAR_CLASSES.index("automobile")]

    assert splits.pool.class_counts().tolist() == [4, 4, 0]
    assert set(row_keys(automobiles)) <= cars
    assert "bird" in caplog.text


def test_load_source_missing_root_raises(tmp_path):
    missing = tmp_path / "no-such-root"

    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_source("cifar10", "train", root=missing)


def test_load_source_no_root_raises():
    with pytest.raises(ValueError, match="data root"):
        load_source("cifar10", "train")


def test_load_source_download_failure_raises(tmp_path, monkeypatch):
    # Without an ImageFolder tree under the root, the torchvision loader runs. The test
    # must not reach the network, so the dataset class fails as an offline download does.
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)

    with pytest.raises(RuntimeError, match="could not be downloaded") as raised:
        load_source("cifar10", "train", root=tmp_path)

    assert str(tmp_path) in str(raised.value)
    assert "cifar10/{train,test}/<class>/<image>" in str(raised.value)


# --------------------------------------------------------------------------- ImageSet


def test_image_set_rejects_float():
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int64), ("a",), "float")


def test_image_set_rejects_three_dims():
    with pytest.raises(ValueError, match="NHWC"):
        ImageSet(np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.int64), ("a",), "flat")


def test_image_set_rejects_label_count():
    with pytest.raises(ValueError, match="3 labels"):
        ImageSet(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int64), ("a",), "short")


def test_image_set_subset_and_counts():
    images = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)
    labels = np.array([0, 2, 2, 0], dtype=np.int64)
    image_set = ImageSet(images, labels, ("a", "b", "c"), "tiny")

    subset = image_set.subset(np.array([1, 2]), name="picked")

    assert image_set.class_counts().tolist() == [2, 0, 2]
    assert subset.name == "picked"
    assert subset.images.ravel().tolist() == [1, 2]
    assert subset.labels.tolist() == [2, 2]
    assert len(subset) == 2


def test_image_source_take_overrides_labels():
    source = load_source("digits", "train")

    subset = source.take(np.array([0, 1]), labels=np.array([5, 6]), class_names=["x"] * 10)

    assert subset.labels.tolist() == [5, 6]
    assert subset.labels.dtype == np.int64
    assert subset.class_names == ("x",) * 10


def test_partial_image_folder_names_missing_split(tmp_path, write_image_folder):
    write_image_folder(tmp_path, "cifar10", {"train": {"cat": 2, "dog": 2}})
    with pytest.raises(FileNotFoundError, match="has no split 'test'"):
        load_source("cifar10", "test", root=tmp_path)
