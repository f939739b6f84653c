"""Galleries of clean-label poisons and summaries of how they were crafted.

Appendix D of Chen et al., "Amplifying Membership Exposure via Data Poisoning" (NeurIPS
2022) shows such galleries for poisons crafted against InceptionV3 with eps = 16/255.

A gallery is a grid whose rows are target classes t and whose columns are poison labels
(the class of the poison's seed). Each off-diagonal cell shows poisons crafted against
its row's target class, drawn at random with a seed rather than picked by eye. The
diagonal is empty because a clean-label poison never carries the target label.

The poisoning sets come from `Study.poisoning_set`, so sets that notebook A stored under
``run_dir/poisons`` for the same dataset, extractor and settings are reused. Target
classes that notebook A does not attack get a smaller set sized for the gallery.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .data import ImageSet
from .experiment import Study
from .poisoning import CraftingConfig, PoisoningSet

log = logging.getLogger(__name__)

# Perturbations are shown as mid-gray + PERTURBATION_GAIN * (poison - seed), so that the
# study's largest perturbation, 16/255, spans the whole 0-255 range.
PERTURBATION_GAIN = 8
MID_GRAY = 128
# Side of one image of `plot_crafting_examples`, in inches.
EXAMPLE_CELL_INCHES = 1.35


# ---------------------------------------------------------------------------------------
# Poisoning sets behind a gallery.


def examples_per_cell(num_classes: int, poisons_per_target: int) -> int:
    """Return how many poisons each off-diagonal cell shows: poisons_per_target / (C - 1).

    Rounded up, so a two-class dataset (one off-diagonal cell per row) shows all
    `poisons_per_target` poisons of a row in its single cell.
    """
    if num_classes < 2:
        raise ValueError(f"a gallery needs at least 2 classes, got {num_classes}")
    if poisons_per_target < 1:
        raise ValueError(f"poisons_per_target must be at least 1, got {poisons_per_target}")
    return math.ceil(poisons_per_target / (num_classes - 1))


def gallery_budget(num_classes: int, per_cell: int) -> int:
    """Return the b_poison that yields exactly `per_cell` poisons of every other class.

    With b = per_cell * C, the attack spends b // C = per_cell images on balancing and
    b - b // C = per_cell * (C - 1) on poisons, spread evenly over the C - 1 other classes.
    """
    return per_cell * num_classes


SPLIT_KEYS = ("members_per_class", "nonmembers_per_class", "pool_per_class", "pool_dataset")


def split_settings(datasets: Sequence[str], dataset_splits: Mapping[str, Mapping], *,
                   shared_dataset: str, shared_splits: Mapping) -> dict[str, dict]:
    """Return the `load_study` split arguments of every gallery dataset.

    Args:
        datasets: the gallery's datasets, in figure order.
        dataset_splits: dataset -> its SPLIT_KEYS, for datasets other than `shared_dataset`
            (``pool_dataset`` may be left out and defaults to None).
        shared_dataset: notebook A's dataset; it always uses `shared_splits`, so that its
            attacker pool, and with it the stored poisoning sets, match notebook A's.
        shared_splits: notebook A's SPLIT_KEYS.

    Raises:
        ValueError: a dataset has no split sizes, or its entry has unknown keys.
    """
    settings = {}
    for name in datasets:
        entry = shared_splits if name == shared_dataset else dataset_splits.get(name)
        if entry is None:
            raise ValueError(f"no split sizes for dataset {name!r}: add it to dataset_splits "
                             f"with the keys {', '.join(SPLIT_KEYS)}")
        unknown = set(entry) - set(SPLIT_KEYS)
        if unknown:
            raise ValueError(f"dataset_splits[{name!r}] has unknown keys {sorted(unknown)}. "
                             f"Expected keys: {', '.join(SPLIT_KEYS)}")
        settings[name] = {"pool_dataset": None, **entry}
    return settings


def gallery_set_seed(seed: int, target_class: int) -> int:
    """Return the seed of a gallery set, derived from the run's seed and the target class.

    The attack draws its seed images with the seed it is given, so sets of different
    target classes built with one seed repeat the same seed images. A seed per target
    class gives each gallery row its own random images.
    """
    return int(np.random.SeedSequence([seed, target_class]).generate_state(1)[0])


@dataclass(frozen=True)
class GalleryPoisons:
    """The clean-label D_poison behind one gallery row.

    Attributes:
        poisoning: the poisoning set against the row's target class.
        budget: its b_poison.
        shared: True when it uses notebook A's budget and settings, so both notebooks
            read the same stored file.
        reused: True when it was loaded from ``run_dir/poisons``, False when this run
            crafted it.
    """

    poisoning: PoisoningSet
    budget: int
    shared: bool
    reused: bool

    @property
    def source(self) -> str:
        """How the set came about, for tables."""
        kind = "notebook A's set" if self.shared else "gallery set"
        return f"{kind}, {'reused' if self.reused else 'crafted in this run'}"


def gallery_poisons(study: Study, *, target_classes: Sequence[int],
                    shared_target_classes: Sequence[int], shared_budget: int,
                    poisons_per_target: int, seed: int, crafting: CraftingConfig,
                    progress: bool = True) -> dict[int, GalleryPoisons]:
    """Build or load one clean-label D_poison per target class.

    Args:
        study: dataset, pool and extractor; sets are stored under ``run_dir/poisons``.
        target_classes: the gallery's rows.
        shared_target_classes: classes notebook A attacks with `shared_budget` (empty for
            datasets notebook A does not use). Their sets use A's budget, so they are read
            from A's stored files, or crafted here and then read by A.
        shared_budget: notebook A's b_poison.
        poisons_per_target: poisons a gallery row needs; the other classes get the budget
            `gallery_budget(C, examples_per_cell(C, poisons_per_target))`.
        seed: notebook A's seed, which the shared sets use for their choice of seeds,
            bases and balancing images. The other sets use `gallery_set_seed(seed, t)`.
        crafting: optimiser settings (notebook A's, for the shared sets to match).
        progress: show crafting progress bars.

    Returns:
        Target class -> `GalleryPoisons`, in the order of `target_classes`.
    """
    per_cell = examples_per_cell(study.num_classes, poisons_per_target)
    small_budget = gallery_budget(study.num_classes, per_cell)
    result = {}
    for target_class in target_classes:
        shared = target_class in shared_target_classes
        budget = shared_budget if shared else small_budget
        set_seed = seed if shared else gallery_set_seed(seed, target_class)
        path = study.poisoning_set_path("clean_label", target_class=target_class,
                                        budget=budget, seed=set_seed, crafting=crafting)
        reused = path.exists()
        poisoning = study.poisoning_set("clean_label", target_class=target_class,
                                        budget=budget, seed=set_seed, crafting=crafting,
                                        progress=progress)
        log.info("%s t=%d: %s, b_poison=%d (%s)", study.dataset, target_class,
                 "reused" if reused else "crafted", budget, path.name)
        result[target_class] = GalleryPoisons(poisoning, budget, shared, reused)
    return result


def linf_255(poisoning: PoisoningSet, pool: ImageSet) -> np.ndarray:
    """Return max |poison - seed| over pixels and channels, per poison, in 1/255 units."""
    poisons = poisoning.poisons
    seeds = pool.images[poisoning.pool_index[poisons]].astype(np.int16)
    differences = np.abs(poisoning.images[poisons].astype(np.int16) - seeds)
    return differences.reshape(len(poisons), -1).max(axis=1) if len(poisons) else np.zeros(0)


def changed_pixel_fractions(poisoning: PoisoningSet, pool: ImageSet) -> dict[str, float]:
    """Return the fraction of pixel values that crafting changed, over all poisons.

    Split by the seed's value: "saturated" for values 0 or 255, "interior" for the rest.
    The tanh box starts a saturated value at the edge of its box, where the gradient of
    tanh almost vanishes, so such values move far less often than interior ones.
    """
    poisons = poisoning.poisons
    seeds = pool.images[poisoning.pool_index[poisons]]
    changed = poisoning.images[poisons] != seeds
    saturated = (seeds == 0) | (seeds == 255)
    return {"all": float(changed.mean()) if changed.size else math.nan,
            "saturated": _nanmean(changed[saturated].astype(float)),
            "interior": _nanmean(changed[~saturated].astype(float))}


# ---------------------------------------------------------------------------------------
# Random choice of the poisons shown.


@dataclass(frozen=True)
class GalleryChoice:
    """The poisons shown in a gallery grid.

    Attributes:
        class_names: name of each class; the columns are all classes in label order.
        target_classes: the row classes, in row order.
        poison_index: int array (rows, classes, examples per cell) of indices into
            ``poisoning.images`` of the row's set; -1 marks an empty slot (the diagonal,
            or a label with fewer poisons than the cell holds).
    """

    class_names: tuple[str, ...]
    target_classes: tuple[int, ...]
    poison_index: np.ndarray

    @property
    def examples_per_cell(self) -> int:
        return self.poison_index.shape[2]


def choose_gallery(poisoning_sets: Mapping[int, PoisoningSet], *,
                   class_names: Sequence[str], per_cell: int, seed: int) -> GalleryChoice:
    """Draw `per_cell` poisons at random for every (target class, poison label) cell.

    Each row draws from its own generator seeded with (seed, target class), so a row's
    choice does not depend on which other rows the gallery has.

    Args:
        poisoning_sets: target class -> its clean-label D_poison.
        class_names: the dataset's class names.
        per_cell: poisons per off-diagonal cell.
        seed: seed of the random choice.

    Returns:
        The `GalleryChoice`; rows follow the order of `poisoning_sets`.
    """
    num_classes = len(class_names)
    index = np.full((len(poisoning_sets), num_classes, per_cell), -1, dtype=np.int64)
    for row, (target_class, poisoning) in enumerate(poisoning_sets.items()):
        if poisoning.attack != "clean_label" or poisoning.target_class != target_class:
            raise ValueError(
                f"row {target_class}: expected a clean-label set crafted against class "
                f"{target_class}, got {poisoning.attack!r} against {poisoning.target_class}"
            )
        rng = np.random.default_rng([seed, target_class])
        poisons = poisoning.poisons
        for label in range(num_classes):
            if label == target_class:
                continue
            candidates = poisons[poisoning.labels[poisons] == label]
            count = min(per_cell, len(candidates))
            if count < per_cell:
                log.warning("t=%d, label %s: %d poisons for %d gallery slots", target_class,
                            class_names[label], len(candidates), per_cell)
            index[row, label, :count] = rng.choice(candidates, size=count, replace=False)
    return GalleryChoice(tuple(class_names), tuple(poisoning_sets), index)


def choose_examples(poisoning_sets: Mapping[int, PoisoningSet], *, count: int,
                    seed: int) -> list[tuple[int, int]]:
    """Draw `count` poisons at random from all sets, as (target class, index) pairs.

    Every poison of every set is equally likely; pairs are sorted by target class.
    """
    pairs = [(target_class, int(i)) for target_class, poisoning in poisoning_sets.items()
             for i in poisoning.poisons]
    if not pairs:
        return []
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    return sorted(pairs[i] for i in chosen)


# ---------------------------------------------------------------------------------------
# Figures.


def _mosaic(images: Sequence[np.ndarray | None]) -> np.ndarray:
    """Tile same-sized uint8 HWC images on a near-square grid with white gaps.

    The gap is 1/20 of the image side (at least one pixel), so it stays visible when a
    large mosaic is drawn smaller than its pixel size. A None entry leaves its tile white.
    """
    shape = next(image.shape for image in images if image is not None)
    height, width, channels = shape
    gap = max(1, round(max(height, width) / 20))
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    canvas = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, channels),
                     255, dtype=np.uint8)
    for position, image in enumerate(images):
        if image is None:
            continue
        top = (position // columns) * (height + gap)
        left = (position % columns) * (width + gap)
        canvas[top:top + height, left:left + width] = image
    return canvas


def show_image(axis: plt.Axes, image: np.ndarray) -> None:
    """Draw a uint8 HWC image pixel for pixel: nearest-neighbour, gray colormap for C = 1."""
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        axis.imshow(image, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.grid(False)


def _blank(axis: plt.Axes) -> None:
    """Leave a cell empty but keep the axis, so that its row and column labels show."""
    axis.set_xticks([])
    axis.set_yticks([])
    axis.grid(False)
    for spine in axis.spines.values():
        spine.set_visible(False)


def figure_dpi(image_pixels: float, inches: float, *, minimum: int = 150,
               maximum: int = 600) -> int:
    """Return a dpi that gives every image pixel two device pixels, within [minimum, maximum].

    Nearest-neighbour drawing keeps pixels sharp at any dpi. At two or more device pixels
    per image pixel, the rounding of pixel widths is also hard to see.
    """
    return int(min(maximum, max(minimum, math.ceil(2 * image_pixels / inches))))


def gallery_cell_inches(num_classes: int) -> float:
    """Return the side of one gallery cell: a 6.5-inch wide grid, cells at most 2.2 inches."""
    return min(2.2, 6.5 / num_classes)


def gallery_dpi(choice: GalleryChoice, image_shape: Sequence[int]) -> int:
    """Return the dpi at which `plot_gallery`'s figure keeps every image pixel sharp.

    Args:
        choice: the gallery drawn.
        image_shape: (height, width) of the pool images.
    """
    tiles = math.ceil(math.sqrt(choice.examples_per_cell))
    side = max(image_shape[:2])
    mosaic_pixels = tiles * (side + max(1, round(side / 20)))
    return figure_dpi(mosaic_pixels, gallery_cell_inches(len(choice.class_names)))


def plot_gallery(choice: GalleryChoice, poisoning_sets: Mapping[int, PoisoningSet], *,
                 title: str) -> plt.Figure:
    """Draw the gallery grid: rows are target classes, columns the poisons' labels.

    Args:
        choice: the poisons to show (`choose_gallery`).
        poisoning_sets: target class -> its clean-label D_poison.
        title: figure title stating the setting.

    Returns:
        The figure; save it at `gallery_dpi` to keep every image pixel sharp.
    """
    rows, columns = len(choice.target_classes), len(choice.class_names)
    cell_inches = gallery_cell_inches(columns)
    # Slant the column names when the longest would be wider than a cell (estimated at
    # 0.09 inches per character at the theme's font size).
    slanted = max(len(name) for name in choice.class_names) * 0.09 > cell_inches
    figure, axes = plt.subplots(rows, columns, figsize=(columns * cell_inches + 1.2,
                                                        rows * cell_inches + 1.0),
                                squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.05})
    for row, target_class in enumerate(choice.target_classes):
        poisoning = poisoning_sets[target_class]
        for label in range(columns):
            axis = axes[row, label]
            slots = choice.poison_index[row, label]
            if label == target_class or (slots < 0).all():
                _blank(axis)
            else:
                show_image(axis, _mosaic([poisoning.images[i] if i >= 0 else None
                                          for i in slots]))
            if label == 0:
                axis.set_ylabel(choice.class_names[target_class], rotation=0,
                                ha="right", va="center")
            if row == rows - 1:
                axis.set_xlabel(choice.class_names[label], rotation=45 if slanted else 0,
                                ha="right" if slanted else "center")
    # Below slanted names, which reach past the figure's bottom margin.
    figure.supxlabel("label of the poison (class of its seed image)",
                     y=-0.05 if slanted else 0.01, va="top" if slanted else "bottom")
    figure.supylabel("target class")
    figure.suptitle(title)
    return figure


def perturbation_image(poison: np.ndarray, seed_image: np.ndarray, *,
                       gain: int = PERTURBATION_GAIN) -> np.ndarray:
    """Return MID_GRAY + gain * (poison - seed), clipped to uint8."""
    delta = poison.astype(np.int16) - seed_image.astype(np.int16)
    return np.clip(MID_GRAY + gain * delta, 0, 255).astype(np.uint8)


def plot_crafting_examples(examples: Sequence[tuple[int, int]],
                           poisoning_sets: Mapping[int, PoisoningSet], pool: ImageSet, *,
                           title: str, gain: int = PERTURBATION_GAIN,
                           cell_inches: float = EXAMPLE_CELL_INCHES) -> plt.Figure:
    """Draw, per chosen poison: seed image, poison, amplified perturbation and base image.

    The labels under the panels give the L-infinity distance between poison and seed in
    1/255 units, and the feature distance ||g(x) - g(base)|| of the seed (before) and of
    the poison (after).

    Args:
        examples: (target class, index into that set's images) pairs (`choose_examples`).
        poisoning_sets: target class -> its clean-label D_poison.
        pool: the attacker pool the seeds and bases come from.
        title: figure title stating the setting.
        gain: amplification of the perturbation around mid-gray.
        cell_inches: side of one image in inches.
    """
    names = pool.class_names
    figure, axes = plt.subplots(len(examples), 4, squeeze=False,
                                figsize=(4 * cell_inches + 0.6,
                                         len(examples) * (cell_inches + 0.55) + 0.6))
    headers = ("seed image", "poison", f"perturbation ×{gain}\naround mid-gray",
               "base image")
    for axis, header in zip(axes[0], headers):
        axis.set_title(header)
    for row, (target_class, i) in enumerate(examples):
        poisoning = poisoning_sets[target_class]
        seed_image = pool.images[poisoning.pool_index[i]]
        base_image = pool.images[poisoning.base_index[i]]
        poison = poisoning.images[i]
        linf = int(np.abs(poison.astype(np.int16) - seed_image.astype(np.int16)).max())
        panels = (seed_image, poison, perturbation_image(poison, seed_image, gain=gain),
                  base_image)
        for axis, image in zip(axes[row], panels):
            show_image(axis, image)
        axes[row, 0].set_xlabel(f"class {names[poisoning.true_labels[i]]}")
        axes[row, 1].set_xlabel(f"L∞ = {linf}/255")
        axes[row, 2].set_xlabel("feature distance\n"
                                f"{poisoning.distance_before[i]:.2f} → "
                                f"{poisoning.distance_after[i]:.2f}")
        axes[row, 3].set_xlabel(f"target class {names[target_class]}")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------
# Table.


def relative_distance_reduction(poisoning: PoisoningSet) -> np.ndarray:
    """Return 1 - after/before of the feature distance to the base, per poison.

    NaN where the seed's features already equal the base's (distance before = 0).
    """
    poisons = poisoning.poisons
    before = poisoning.distance_before[poisons]
    after = poisoning.distance_after[poisons]
    reduction = np.full(len(poisons), np.nan)
    np.divide(before - after, before, out=reduction, where=before > 0)
    return reduction


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN values; NaN when there are none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def crafting_summary(poisons: Mapping[int, GalleryPoisons], pool: ImageSet) -> pd.DataFrame:
    """Summarise each target class's poisons, with a last row over all of them.

    Columns: the set's origin, b_poison, number of poisons, and the mean and max
    L-infinity perturbation in 1/255 units, measured on the stored uint8 images, and the
    percentage of pixel values that crafting changed. Then the mean relative feature-distance reduction 1 - after/before in percent, over poisons
    whose seed is not already at distance 0 from its base. Last, the crafting seconds per
    poison as stored with the set, so measured where and when it was crafted.
    """
    rows = {}
    all_linf, all_reduction, all_seconds, all_changed = [], [], [], []
    for target_class, entry in poisons.items():
        poisoning = entry.poisoning
        linf = linf_255(poisoning, pool)
        reduction = relative_distance_reduction(poisoning)
        poison_rows = poisoning.poisons
        rows[pool.class_names[target_class]] = {
            "D_poison": entry.source,
            "b_poison": entry.budget,
            "poisons": len(poison_rows),
            "mean L∞ (1/255)": linf.mean(),
            "max L∞ (1/255)": linf.max(),
            "changed pixel values (%)": 100 * changed_pixel_fractions(poisoning, pool)["all"],
            "mean distance reduction (%)": 100 * _nanmean(reduction),
            "crafting s/poison": poisoning.seconds_per_poison,
        }
        all_linf.append(linf)
        all_reduction.append(reduction)
        all_seconds.append(np.full(len(poison_rows), poisoning.seconds_per_poison))
        all_changed.append(changed_pixel_fractions(poisoning, pool)["all"] * len(poison_rows))
    linf, reduction = np.concatenate(all_linf), np.concatenate(all_reduction)
    rows["all"] = {
        "D_poison": "",
        "b_poison": sum(entry.budget for entry in poisons.values()),
        "poisons": len(linf),
        "mean L∞ (1/255)": linf.mean(),
        "max L∞ (1/255)": linf.max(),
        "changed pixel values (%)": 100 * sum(all_changed) / len(linf),
        "mean distance reduction (%)": 100 * _nanmean(reduction),
        "crafting s/poison": np.concatenate(all_seconds).mean(),
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "target class"
    return table
