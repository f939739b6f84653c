"""One dataset with one extractor: the splits, g, cached features and poisoning sets.

`Study` is what every notebook starts from. It contains the three splits, the frozen
extractor and the features of members and non-members, and builds (or reuses) the
poisoning sets of a run, so that notebooks A to D share one copy of each poisoning set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Splits, make_splits
from .extractors import FeatureExtractor, build_extractor
from .features import cached_features
from .poisoning import CraftingConfig, PoisoningSet, make_poisoning_set, poisoning_set_path

log = logging.getLogger(__name__)

# Group codes of a training sample, used to report metrics per group.
GROUP_MEMBER, GROUP_POISON, GROUP_BALANCING = 0, 1, 2


@dataclass(frozen=True)
class TrainingData:
    """D_train = D_clean + D_poison, as features.

    Attributes:
        features: float32 (N, d).
        labels: labels the model is trained on (poison labels included).
        groups: GROUP_MEMBER, GROUP_POISON or GROUP_BALANCING per sample.
    """

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray


@dataclass
class Study:
    """Splits, extractor and cached features of one dataset.

    Attributes:
        dataset: name of the members' dataset.
        splits: members, non-members and attacker pool.
        extractor: the frozen g.
        member_features: g of the members, (N_members, d).
        nonmember_features: g of the non-members.
        cache_dir: folder of the feature cache.
        run_dir: folder of the run (profile); poisoning sets are stored below it.
    """

    dataset: str
    splits: Splits
    extractor: FeatureExtractor
    member_features: np.ndarray
    nonmember_features: np.ndarray
    cache_dir: Path
    run_dir: Path

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.splits.class_names

    def features_of(self, images: np.ndarray, *, tag: str) -> np.ndarray:
        """g(images), cached."""
        return cached_features(self.extractor, images, cache_dir=self.cache_dir,
                               tag=f"{self.dataset}/{tag}", progress=False)

    def poisoning_set(self, attack: str, *, target_class: int, budget: int, seed: int,
                      crafting: CraftingConfig = CraftingConfig(),
                      progress: bool = True) -> PoisoningSet:
        """D_poison of `attack` against `target_class`, stored under ``run_dir/poisons``."""
        return make_poisoning_set(attack, self.splits.pool, target_class=target_class,
                                  budget=budget, seed=seed, extractor=self.extractor,
                                  config=crafting, store_dir=self.run_dir / "poisons",
                                  dataset=self.dataset, progress=progress)

    def poisoning_set_path(self, attack: str, *, target_class: int, budget: int, seed: int,
                           crafting: CraftingConfig = CraftingConfig()) -> Path:
        """Return the file `poisoning_set` reads or writes for these arguments."""
        return poisoning_set_path(attack, self.splits.pool, target_class=target_class,
                                  budget=budget, seed=seed, store_dir=self.run_dir / "poisons",
                                  extractor=self.extractor, config=crafting,
                                  dataset=self.dataset)

    def training_data(self, poisoning: PoisoningSet) -> TrainingData:
        """Concatenate the members with D_poison (features, model labels, groups)."""
        poison_features = (self.features_of(poisoning.images,
                                            tag=f"{poisoning.attack}-t{poisoning.target_class}")
                           if len(poisoning) else
                           np.zeros((0, self.member_features.shape[1]), np.float32))
        groups = np.where(poisoning.is_poison, GROUP_POISON, GROUP_BALANCING)
        return TrainingData(
            features=np.concatenate([self.member_features, poison_features]),
            labels=np.concatenate([self.splits.members.labels, poisoning.labels]),
            groups=np.concatenate([np.full(len(self.splits.members), GROUP_MEMBER), groups]),
        )


def check_target_classes(target_classes, *, num_classes: int, dataset: str) -> list[int]:
    """Return `target_classes` as a list of ints, raising ValueError when one is invalid."""
    if isinstance(target_classes, (int, str)) or not hasattr(target_classes, "__iter__"):
        raise ValueError(f"target_classes must be a list of class indices, e.g. [0, 1], got "
                         f"{target_classes!r}")
    classes = list(target_classes)
    invalid = [t for t in classes if not isinstance(t, int) or not 0 <= t < num_classes]
    if invalid or not classes:
        raise ValueError(f"target_classes {classes} must be non-empty class indices in "
                         f"[0, {num_classes}) for {dataset}; invalid: {invalid}")
    return classes


def load_study(dataset: str, *, extractor: str | FeatureExtractor, members_per_class: int,
               nonmembers_per_class: int, pool_per_class: int, seed: int,
               cache_dir: str | Path, run_dir: str | Path, input_size: int = 96,
               data_root: str | Path | None = None, pool_dataset: str | None = None) -> Study:
    """Draw the splits, build g and extract (or load) member and non-member features.

    Args:
        dataset: the members' dataset (see `mexp_lib.data.DATASETS`).
        extractor: a registry name (built with ImageNet weights) or a built extractor.
        members_per_class, nonmembers_per_class, pool_per_class, seed, pool_dataset:
            as in `mexp_lib.data.make_splits`.
        cache_dir: folder of the feature cache.
        run_dir: folder of the run; poisoning sets go to ``run_dir/poisons``.
        input_size: model input side in pixels when `extractor` is a name.
        data_root: data root for datasets that are not shipped in packages.

    Returns:
        The `Study`.
    """
    splits = make_splits(dataset, members_per_class=members_per_class,
                         nonmembers_per_class=nonmembers_per_class,
                         pool_per_class=pool_per_class, seed=seed, root=data_root,
                         pool_dataset=pool_dataset)
    if isinstance(extractor, str):
        extractor = build_extractor(extractor, input_size=input_size)
    cache_dir, run_dir = Path(cache_dir), Path(run_dir)
    member_features = cached_features(extractor, splits.members.images, cache_dir=cache_dir,
                                      tag=f"{dataset}/members")
    nonmember_features = cached_features(extractor, splits.nonmembers.images,
                                         cache_dir=cache_dir, tag=f"{dataset}/nonmembers")
    return Study(dataset, splits, extractor, member_features, nonmember_features,
                 cache_dir, run_dir)
