"""Tests for mexp_lib.gallery: poisoning sets behind a gallery, the random choice, figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from mexp_lib import gallery
from mexp_lib.data import ImageSet, Splits
from mexp_lib.experiment import Study
from mexp_lib.extractors import build_extractor
from mexp_lib.poisoning import CraftingConfig, PoisoningSet, split_budget

CLASS_NAMES = ("cat", "dog", "frog")
EPS_255 = 16
# A large learning rate, so that 3 iterations move pixels by several 1/255 steps and the
# eps bound is actually reached.
CRAFTING = CraftingConfig(eps=EPS_255 / 255, iterations=3, lr=0.5, batch_size=8)


def _image_set(rng: np.random.Generator, per_class: int, name: str) -> ImageSet:
    labels = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
    images = rng.integers(0, 256, size=(len(labels), 12, 12, 3), dtype=np.uint8)
    return ImageSet(images, labels, CLASS_NAMES, name)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    """Three classes of random 12x12 RGB images and a random-init EfficientNet-Lite0 at 32 px."""
    rng = np.random.default_rng(0)
    splits = Splits(members=_image_set(rng, 4, "toy/members"),
                    nonmembers=_image_set(rng, 4, "toy/nonmembers"),
                    pool=_image_set(rng, 10, "toy/pool"))
    extractor = build_extractor("efficientnet_lite0", input_size=32, pretrained=False)
    features = np.zeros((12, extractor.feature_dim), dtype=np.float32)
    root = tmp_path_factory.mktemp("gallery")
    return Study("toy", splits, extractor, features, features.copy(), root / "cache",
                 root / "run")


@pytest.fixture(scope="module")
def poisons(study) -> dict[int, gallery.GalleryPoisons]:
    """Class 0 gets a 'notebook A' set with b_poison = 9, classes 1 and 2 gallery sets."""
    return gallery.gallery_poisons(study, target_classes=[0, 1, 2], shared_target_classes=[0],
                                   shared_budget=9, poisons_per_target=4, seed=0,
                                   crafting=CRAFTING, progress=False)


def _sets(poisons) -> dict[int, PoisoningSet]:
    return {target: entry.poisoning for target, entry in poisons.items()}


def test_examples_per_cell_and_budget():
    assert gallery.examples_per_cell(10, 9) == 1
    assert gallery.examples_per_cell(10, 10) == 2
    assert gallery.examples_per_cell(2, 9) == 9
    for num_classes, per_cell in ((10, 1), (10, 3), (2, 9), (5, 2)):
        budget = gallery.gallery_budget(num_classes, per_cell)
        num_poisons, num_balancing = split_budget(budget, num_classes)
        assert num_poisons == per_cell * (num_classes - 1)
        assert num_balancing == per_cell


def test_examples_per_cell_rejects_one_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        gallery.examples_per_cell(1, 9)


def test_split_settings_uses_shared_splits():
    shared = {"members_per_class": 5, "nonmembers_per_class": 6, "pool_per_class": 7,
              "pool_dataset": None}
    settings = gallery.split_settings(
        ["mnist", "cifar10"], {"mnist": {"members_per_class": 1, "nonmembers_per_class": 2,
                                         "pool_per_class": 3},
                               "cifar10": {"members_per_class": 99}},
        shared_dataset="cifar10", shared_splits=shared)
    assert list(settings) == ["mnist", "cifar10"]
    assert settings["cifar10"] == shared
    assert settings["mnist"]["pool_per_class"] == 3
    assert settings["mnist"]["pool_dataset"] is None


def test_split_settings_rejects_missing_dataset():
    with pytest.raises(ValueError, match="no split sizes for dataset 'stl10'"):
        gallery.split_settings(["stl10"], {}, shared_dataset="cifar10", shared_splits={})


def test_split_settings_rejects_unknown_key():
    with pytest.raises(ValueError, match="unknown keys"):
        gallery.split_settings(["mnist"], {"mnist": {"members": 3}}, shared_dataset="x",
                               shared_splits={})


def test_gallery_poisons_budgets(poisons):
    assert poisons[0].shared
    assert poisons[0].budget == 9
    assert not poisons[1].shared
    assert poisons[1].budget == gallery.gallery_budget(3, 2)
    for target, entry in poisons.items():
        assert entry.poisoning.target_class == target
        assert entry.poisoning.attack == "clean_label"
        assert not entry.reused


def test_stored_path_matches_study(study, poisons):
    for target, entry in poisons.items():
        seed = 0 if entry.shared else gallery.gallery_set_seed(0, target)
        path = study.poisoning_set_path("clean_label", target_class=target,
                                        budget=entry.budget, seed=seed, crafting=CRAFTING)
        assert path.exists(), f"t={target}: {path.name} not written by Study.poisoning_set"


def test_gallery_set_seed_differs_per_target():
    seeds = {gallery.gallery_set_seed(0, target) for target in range(10)}
    assert len(seeds) == 10
    assert gallery.gallery_set_seed(0, 3) == gallery.gallery_set_seed(0, 3)
    assert gallery.gallery_set_seed(0, 3) != gallery.gallery_set_seed(1, 3)


def test_second_call_reuses_stored_sets(study, poisons):
    again = gallery.gallery_poisons(study, target_classes=[0, 1, 2], shared_target_classes=[0],
                                    shared_budget=9, poisons_per_target=4, seed=0,
                                    crafting=CRAFTING, progress=False)
    for target in poisons:
        assert again[target].reused
        np.testing.assert_array_equal(again[target].poisoning.images,
                                      poisons[target].poisoning.images)


def test_gallery_poisons_within_eps_of_seed(study, poisons):
    sets = _sets(poisons)
    choice = gallery.choose_gallery(sets, class_names=CLASS_NAMES, per_cell=2, seed=0)
    pool = study.splits.pool
    largest = 0
    for row, target in enumerate(choice.target_classes):
        for index in choice.poison_index[row].ravel():
            if index < 0:
                continue
            poison = sets[target].images[index].astype(int)
            seed_image = pool.images[sets[target].pool_index[index]].astype(int)
            distance = np.abs(poison - seed_image).max()
            assert distance <= EPS_255, f"t={target}, poison {index}: L-inf {distance}/255"
            largest = max(largest, distance)
    assert largest > 0, "crafting left every gallery poison equal to its seed"


def test_linf_255_matches_direct_computation(study, poisons):
    pool = study.splits.pool
    for entry in poisons.values():
        poisoning = entry.poisoning
        expected = [np.abs(poisoning.images[i].astype(int)
                           - pool.images[poisoning.pool_index[i]].astype(int)).max()
                    for i in poisoning.poisons]
        np.testing.assert_array_equal(gallery.linf_255(poisoning, pool), expected)


def test_grid_cells_match_row_and_column(poisons):
    sets = _sets(poisons)
    choice = gallery.choose_gallery(sets, class_names=CLASS_NAMES, per_cell=2, seed=0)
    assert choice.poison_index.shape == (3, 3, 2)
    for row, target in enumerate(choice.target_classes):
        poisoning = sets[target]
        assert (choice.poison_index[row, target] == -1).all(), f"diagonal of row {target}"
        for label in range(3):
            if label == target:
                continue
            for index in choice.poison_index[row, label]:
                assert index >= 0, f"empty slot in cell ({target}, {label})"
                assert poisoning.is_poison[index]
                assert poisoning.labels[index] == label
                assert poisoning.target_class == target
        chosen = choice.poison_index[row][choice.poison_index[row] >= 0]
        assert len(set(chosen)) == len(chosen), f"row {target} repeats a poison"


def test_grid_leaves_slots_empty_when_poisons_run_out(poisons):
    sets = _sets(poisons)
    choice = gallery.choose_gallery(sets, class_names=CLASS_NAMES, per_cell=3, seed=0)
    # Gallery sets hold 2 poisons per label, so a third slot stays empty.
    assert (choice.poison_index[1, 0] >= 0).sum() == 2
    assert choice.poison_index[1, 0, 2] == -1


def test_choice_deterministic_for_seed(poisons):
    sets = _sets(poisons)
    first = gallery.choose_gallery(sets, class_names=CLASS_NAMES, per_cell=1, seed=3)
    second = gallery.choose_gallery(sets, class_names=CLASS_NAMES, per_cell=1, seed=3)
    np.testing.assert_array_equal(first.poison_index, second.poison_index)
    assert gallery.choose_examples(sets, count=4, seed=3) == gallery.choose_examples(
        sets, count=4, seed=3)


def test_choice_varies_with_seed(poisons):
    sets = _sets(poisons)
    choices = {seed: gallery.choose_gallery(sets, class_names=CLASS_NAMES, per_cell=1,
                                            seed=seed).poison_index.tobytes()
               for seed in range(8)}
    assert len(set(choices.values())) > 1
    examples = {tuple(gallery.choose_examples(sets, count=3, seed=seed)) for seed in range(8)}
    assert len(examples) > 1


def test_row_choice_independent_of_other_rows(poisons):
    sets = _sets(poisons)
    full = gallery.choose_gallery(sets, class_names=CLASS_NAMES, per_cell=1, seed=5)
    single = gallery.choose_gallery({2: sets[2]}, class_names=CLASS_NAMES, per_cell=1, seed=5)
    np.testing.assert_array_equal(full.poison_index[2], single.poison_index[0])


def test_choose_gallery_rejects_wrong_row(poisons):
    with pytest.raises(ValueError, match="crafted against class 1"):
        gallery.choose_gallery({1: poisons[0].poisoning}, class_names=CLASS_NAMES,
                               per_cell=1, seed=0)


def test_choose_examples_are_poisons(poisons):
    sets = _sets(poisons)
    examples = gallery.choose_examples(sets, count=5, seed=0)
    assert len(examples) == 5
    assert len(set(examples)) == 5
    for target, index in examples:
        assert sets[target].is_poison[index]


def test_crafting_summary(study, poisons):
    table = gallery.crafting_summary(poisons, study.splits.pool)
    assert list(table.index) == ["cat", "dog", "frog", "all"]
    assert (table["max L∞ (1/255)"] <= EPS_255).all()
    assert table.loc["all", "poisons"] == sum(len(e.poisoning.poisons) for e in poisons.values())
    assert table.loc["cat", "poisons"] == split_budget(9, 3)[0]
    expected = 100 * np.nanmean(gallery.relative_distance_reduction(poisons[1].poisoning))
    assert table.loc["dog", "mean distance reduction (%)"] == pytest.approx(expected)
    assert table.loc["cat", "D_poison"] == "notebook A's set, crafted in this run"


def test_relative_distance_reduction_skips_zero_distance():
    poisoning = PoisoningSet(
        "clean_label", 0, np.zeros((3, 2, 2, 1), np.uint8), np.array([1, 1, 0]),
        np.array([1, 1, 0]), np.array([True, True, False]), np.arange(3),
        np.array([5, 6, -1]), np.array([2.0, 0.0, np.nan]), np.array([1.5, 0.0, np.nan]))
    reduction = gallery.relative_distance_reduction(poisoning)
    assert reduction[0] == pytest.approx(0.25)
    assert np.isnan(reduction[1])


def test_perturbation_image_centres_on_mid_gray():
    seed_image = np.array([[[100], [250], [3]]], dtype=np.uint8)
    poison = np.array([[[100], [255], [0]]], dtype=np.uint8)
    shown = gallery.perturbation_image(poison, seed_image, gain=8)
    np.testing.assert_array_equal(shown[..., 0], [[128, 168, 104]])
    extreme = gallery.perturbation_image(np.array([[[16]]], np.uint8),
                                         np.array([[[0]]], np.uint8), gain=8)
    assert extreme.item() == 255


def test_plot_gallery_layout(poisons):
    sets = _sets(poisons)
    choice = gallery.choose_gallery(sets, class_names=CLASS_NAMES, per_cell=2, seed=0)
    figure = gallery.plot_gallery(choice, sets, title="toy")
    axes = np.array(figure.axes).reshape(3, 3)
    for row in range(3):
        for column in range(3):
            images = axes[row, column].get_images()
            assert len(images) == (0 if row == column else 1), (row, column)
            for image in images:
                assert image.get_interpolation() == "nearest"
    assert [axes[row, 0].get_ylabel() for row in range(3)] == list(CLASS_NAMES)
    assert [axes[2, column].get_xlabel() for column in range(3)] == list(CLASS_NAMES)
    plt.close(figure)


def test_plot_gallery_grayscale_uses_gray_colormap():
    images = np.full((2, 4, 4, 1), 200, dtype=np.uint8)
    poisoning = PoisoningSet("clean_label", 0, images, np.array([1, 0]), np.array([1, 0]),
                             np.array([True, False]), np.arange(2), np.array([1, -1]),
                             np.array([1.0, np.nan]), np.array([0.5, np.nan]))
    choice = gallery.choose_gallery({0: poisoning}, class_names=("a", "b"), per_cell=1, seed=0)
    figure = gallery.plot_gallery(choice, {0: poisoning}, title="gray")
    image = figure.axes[1].get_images()[0]
    assert image.get_cmap().name == "gray"
    assert image.get_array().shape == (4, 4)
    plt.close(figure)


def test_plot_crafting_examples_panels(study, poisons):
    sets = _sets(poisons)
    examples = gallery.choose_examples(sets, count=3, seed=0)
    figure = gallery.plot_crafting_examples(examples, sets, study.splits.pool, title="toy")
    axes = np.array(figure.axes).reshape(3, 4)
    for row, (target, index) in enumerate(examples):
        poisoning = sets[target]
        seed_image = study.splits.pool.images[poisoning.pool_index[index]]
        np.testing.assert_array_equal(axes[row, 0].get_images()[0].get_array(), seed_image)
        np.testing.assert_array_equal(axes[row, 1].get_images()[0].get_array(),
                                      poisoning.images[index])
        np.testing.assert_array_equal(axes[row, 3].get_images()[0].get_array(),
                                      study.splits.pool.images[poisoning.base_index[index]])
        assert study.splits.pool.labels[poisoning.base_index[index]] == target
        assert axes[row, 1].get_xlabel().startswith("L∞ = ")
    plt.close(figure)


def test_figure_dpi_bounds():
    assert gallery.figure_dpi(28, 0.65) == 150
    assert gallery.figure_dpi(96, 0.65) == 296
    assert gallery.figure_dpi(700, 0.65) == 600


def test_changed_pixel_fractions_split_by_seed_value():
    seed_images = np.array([[[[0], [255]], [[10], [20]]]], dtype=np.uint8)
    poison = np.array([[[[1], [255]], [[10], [21]]]], dtype=np.uint8)
    pool = ImageSet(seed_images, np.array([1]), ("a", "b"), "toy")
    poisoning = PoisoningSet("clean_label", 0, poison, np.array([1]), np.array([1]),
                             np.array([True]), np.array([0]), np.array([0]),
                             np.array([1.0]), np.array([0.5]))
    fractions = gallery.changed_pixel_fractions(poisoning, pool)
    assert fractions["all"] == pytest.approx(0.5)
    assert fractions["saturated"] == pytest.approx(0.5)
    assert fractions["interior"] == pytest.approx(0.5)
    poison[0, 1, 1, 0] = 20
    assert gallery.changed_pixel_fractions(poisoning, pool)["interior"] == pytest.approx(0.0)


def test_plot_gallery_two_classes_tiles_cell():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(10, 7, 5, 3), dtype=np.uint8)
    labels = np.array([1] * 9 + [0])
    poisoning = PoisoningSet("clean_label", 0, images, labels, labels, labels == 1,
                             np.arange(10), np.where(labels == 1, 0, -1),
                             np.ones(10), np.ones(10))
    choice = gallery.choose_gallery({0: poisoning}, class_names=("no", "yes"), per_cell=9,
                                    seed=0)
    figure = gallery.plot_gallery(choice, {0: poisoning}, title="two classes")
    mosaic = figure.axes[1].get_images()[0].get_array()
    assert mosaic.shape == (3 * 7 + 2, 3 * 5 + 2, 3)  # 3 x 3 tiles, gaps of 1 pixel
    assert not figure.axes[0].get_images()
    plt.close(figure)
