"""The measurements of notebook B: the heuristic h in three case studies.

Notebook B reproduces Appendix B of *Amplifying Membership Exposure via Data Poisoning*
(Chen et al., NeurIPS 2022). It measures the heuristic h (see `mexp_lib.heuristic`) of the
target-class members in three case studies:

1. clean models of several extractors, in input space and in each feature space;
2. clean and dirty-label poisoned training sets whose attacker pool D_shadow comes from the
   members' dataset or from another dataset;
3. classifiers whose extractor g is fine-tuned together with the head (`mexp_lib.finetune`)
   on clean, dirty-label and clean-label training sets.

Each case study is one function here that returns h per curve and per target class.
`averaged_cdf`, `h_table` and `plot_h_cdfs` turn those into the notebook's figures and
tables. The CDF of a curve is the average of the per-class CDFs, every target class with
equal weight, as in the appendix's figures.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import heuristic, mi, plots
from .data import ImageSet
from .experiment import GROUP_MEMBER, Study
from .extractors import FeatureExtractor, build_extractor, model_inputs
from .features import cached_features, extract_features, images_digest
from .finetune import (FineTuningConfig, batch_norm_statistics_change, fine_tune, head_logits,
                       initial_head, weight_change)
from .heads import accuracy
from .poisoning import CraftingConfig, PoisoningSet
from .store import cached_arrays

log = logging.getLogger(__name__)

# Curve label -> target class -> h of that class's members, one value per member.
HCurves = dict[str, dict[int, np.ndarray]]

H_AXIS_LABEL = "heuristic h (dimensionless, symmetric-log scale)"


# ---------------------------------------------------------------------------------------
# h of the target-class members.


def input_vectors(images: np.ndarray, *, input_size: int) -> torch.Tensor:
    """Flatten images in the model's input form (RGB, resized, in [0, 1]) to (N, 3 * size^2)."""
    if len(images) == 0:
        return torch.zeros(0, 3 * input_size * input_size)
    return model_inputs(images, input_size=input_size).flatten(start_dim=1)


def h_of_members(vectors: np.ndarray | torch.Tensor, labels: np.ndarray, *,
                 is_member: np.ndarray, target_classes: Sequence[int],
                 chunk_size: int = 1024) -> dict[int, np.ndarray]:
    """Compute h of the members of each target class against every row of D_train.

    Args:
        vectors: D_train as rows, (N, D): flattened inputs or features.
        labels: labels the model trains on, (N,), poison labels included.
        is_member: True for the rows of D_clean; only those are queried.
        target_classes: classes whose members are queried.
        chunk_size: block size of the distance search (memory grows with its square).

    Returns:
        Target class -> h of its members, in row order.

    Raises:
        ValueError: a target class has no member in D_train.
    """
    labels = np.asarray(labels)
    is_member = np.asarray(is_member, dtype=bool)
    queries = np.flatnonzero(is_member & np.isin(labels, list(target_classes)))
    query_labels = labels[queries]
    absent = [t for t in target_classes if not np.any(query_labels == t)]
    if absent:
        raise ValueError(f"target classes {absent} have no member in D_train; choose classes "
                         "that the members contain")
    values = heuristic.heuristic_h(vectors, labels, query_indices=queries, chunk_size=chunk_size)
    return {int(t): values.h[query_labels == t] for t in target_classes}


# ---------------------------------------------------------------------------------------
# Class-averaged CDFs, quantiles and tables.


def _defined(h: np.ndarray) -> np.ndarray:
    """Drop NaN values: h is 0/0 for a sample with duplicates of both labels."""
    h = np.asarray(h, dtype=np.float64)
    return h[~np.isnan(h)]


def averaged_cdf(h_by_class: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Average the per-class empirical CDFs of h, every class with equal weight.

    NaN values are left out, and so is a class whose h values are all NaN (a warning is
    logged). The grid is every distinct value of h, +-inf included.

    Returns:
        (grid, fraction): sorted h values and the averaged F(h) at each; both empty when
        no class has a defined value.
    """
    samples = []
    for t, h in h_by_class.items():
        defined = _defined(h)
        if defined.size == 0:
            log.warning("class %s: all %d h values are undefined (NaN); it is left out of "
                        "the CDF", t, np.size(h))
            continue
        samples.append(defined)
    if not samples:
        return np.zeros(0), np.zeros(0)
    grid = np.unique(np.concatenate(samples))
    return grid, heuristic.average_cdf(samples, grid)


def averaged_quantile(h_by_class: Mapping[int, np.ndarray], level: float) -> float:
    """Return the smallest h whose class-averaged CDF reaches `level` (NaN if none).

    For a single class this is ``np.quantile(h, level, method="inverted_cdf")``, the
    quantile that `heuristic.h_summary` reports.
    """
    if not 0 < level <= 1:
        raise ValueError(f"level must lie in (0, 1], got {level}")
    grid, fraction = averaged_cdf(h_by_class)
    if grid.size == 0:
        return float("nan")
    # The tolerance absorbs rounding of the averaged fractions, which are sums of i / n.
    return float(grid[np.argmax(fraction >= level - 1e-12)])


def h_table(curves: Mapping[str, Mapping[int, np.ndarray]], *,
            class_names: Sequence[str]) -> pd.DataFrame:
    """Summarise each curve: its classes, sample count, share of h < 0, p10 and median.

    Quantiles and the share of h < 0 are those of the class-averaged distribution that
    the CDF figures draw. NaN values of h are counted in ``undefined`` and left out.
    """
    rows = []
    for label, h_by_class in curves.items():
        pooled = np.concatenate([np.asarray(h, dtype=np.float64) for h in h_by_class.values()])
        defined = [values for values in map(_defined, h_by_class.values()) if values.size]
        negative = np.mean([np.mean(values < 0) for values in defined]) if defined else np.nan
        rows.append({
            "curve": label,
            "target classes": ", ".join(class_names[t] for t in h_by_class),
            "members": int(pooled.size),
            "undefined": int(np.isnan(pooled).sum()),
            "fraction h < 0": float(negative),
            "p10 h": averaged_quantile(h_by_class, 0.10),
            "median h": averaged_quantile(h_by_class, 0.50),
        })
    return pd.DataFrame(rows).set_index("curve")


def plot_h_cdfs(axis: plt.Axes, curves: Mapping[str, Mapping[int, np.ndarray]], *,
                colors: Mapping[str, str] | None = None,
                styles: Mapping[str, str] | None = None) -> None:
    """Draw the class-averaged CDF of h per curve on a symmetric-log h axis."""
    plots.plot_cdfs(axis, {label: averaged_cdf(h) for label, h in curves.items()},
                    colors=colors, styles=styles, xlabel=H_AXIS_LABEL, symlog=True)


def add_figure_legend(figure: plt.Figure, axis: plt.Axes, *, columns: int = 3) -> None:
    """Draw one legend for the whole figure, below the panels, from `axis`'s lines."""
    handles, labels = axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=columns)


# ---------------------------------------------------------------------------------------
# Case study 1: clean models of several extractors.


def input_space_label(input_size: int) -> str:
    return f"input space ({input_size}×{input_size} px)"


def untrained_label(name: str) -> str:
    return f"{name}, untrained (random init)"


def extractor_h_curves(members: ImageSet, *, dataset: str, extractors: Sequence[str],
                       untrained_reference: str | None, input_size: int,
                       target_classes: Sequence[int], cache_dir: str,
                       chunk_size: int = 1024, progress: bool = True) -> HCurves:
    """Measure h of the target-class members of clean models (D_train = D_clean).

    One curve per extractor (ImageNet weights, h in its feature space), one for the
    input space at `input_size` (independent of the extractor otherwise), and one for a
    randomly initialised copy of `untrained_reference` when it is given.

    Args:
        members: D_clean.
        dataset: the members' dataset name, part of the feature cache's file names.
        extractors: registry names.
        untrained_reference: registry name of the untrained reference, or None.
        input_size: model input side in pixels, for every extractor and the input space.
        target_classes: classes whose members are queried.
        cache_dir: folder of the feature cache.
        chunk_size: block size of the distance search.
        progress: show a progress bar over the extractors.

    Returns:
        Curve label -> target class -> h.
    """
    is_member = np.ones(len(members), dtype=bool)
    curves: HCurves = {}
    curves[input_space_label(input_size)] = h_of_members(
        input_vectors(members.images, input_size=input_size), members.labels,
        is_member=is_member, target_classes=target_classes, chunk_size=chunk_size)
    models = [(name, True) for name in extractors]
    if untrained_reference is not None:
        models.append((untrained_reference, False))
    for name, pretrained in tqdm(models, desc="case study 1: extractors", disable=not progress):
        extractor = build_extractor(name, input_size=input_size, pretrained=pretrained)
        features = cached_features(extractor, members.images, cache_dir=cache_dir,
                                   tag=f"{dataset}/members", progress=False)
        label = name if pretrained else untrained_label(name)
        curves[label] = h_of_members(features, members.labels, is_member=is_member,
                                     target_classes=target_classes, chunk_size=chunk_size)
    return curves


# ---------------------------------------------------------------------------------------
# Case study 2: the attacker's shadow data.


def poisoned_h(study: Study, poisoning: PoisoningSet, *, input_space: bool,
               chunk_size: int = 1024) -> np.ndarray:
    """Compute h of the target-class members with D_train = D_clean ∪ D_poison.

    Poisons carry the labels the model trains on. In input space every image, whatever
    its source resolution, is resized to the study's input size first.
    """
    data = study.training_data(poisoning)
    if input_space:
        size = study.extractor.input_size
        vectors = torch.cat([input_vectors(study.splits.members.images, input_size=size),
                             input_vectors(poisoning.images, input_size=size)])
    else:
        vectors = data.features
    target = poisoning.target_class
    return h_of_members(vectors, data.labels, is_member=data.groups == GROUP_MEMBER,
                        target_classes=[target], chunk_size=chunk_size)[target]


def shadow_pool_h_curves(studies: Mapping[str, Study], *, target_classes: Sequence[int],
                         budget: int, seed: int, spaces: Sequence[str] = ("features", "input"),
                         chunk_size: int = 1024,
                         progress: bool = True) -> dict[str, dict[int, HCurves]]:
    """Measure h for no poisoning and for dirty-label poisoning from each attacker pool.

    Args:
        studies: curve label of the dirty-label set -> a `Study` whose pool is that
            D_shadow. All studies must share members and extractor; the first one also
            gives the clean curve, labelled with `plots.ATTACK_LABELS["none"]`.
        target_classes: one panel per class.
        budget: b_poison.
        seed: seed of the poisoning sets.
        spaces: "features" (the study's g) and/or "input".
        chunk_size: block size of the distance search.
        progress: show a progress bar.

    Returns:
        space -> target class -> curve label -> {target class: h}.
    """
    unknown = set(spaces) - {"features", "input"}
    if unknown:
        raise ValueError(f"unknown spaces {sorted(unknown)}; use 'features' and/or 'input'")
    first = next(iter(studies.values()))
    for label, study in studies.items():
        if not np.array_equal(study.splits.members.images, first.splits.members.images):
            raise ValueError(f"study {label!r} has other members than the first study; "
                             "draw every study with the same dataset, sizes and seed")
    jobs = [(space, t) for space in spaces for t in target_classes]
    curves: dict[str, dict[int, HCurves]] = {space: {} for space in spaces}
    for space, t in tqdm(jobs, desc="case study 2: shadow data", disable=not progress):
        panel: HCurves = {}
        clean = first.poisoning_set("none", target_class=t, budget=budget, seed=seed)
        panel[plots.ATTACK_LABELS["none"]] = {t: poisoned_h(
            first, clean, input_space=space == "input", chunk_size=chunk_size)}
        for label, study in studies.items():
            poisoning = study.poisoning_set("dirty_label", target_class=t, budget=budget,
                                            seed=seed)
            panel[label] = {t: poisoned_h(study, poisoning, input_space=space == "input",
                                          chunk_size=chunk_size)}
        curves[space][t] = panel
    return curves


# ---------------------------------------------------------------------------------------
# Case study 3: fine-tuned classifiers.


def balanced_subset(labels: np.ndarray, *, per_class: int | None, seed: int) -> np.ndarray:
    """Pick `per_class` indices of each class at random (sorted); all indices when None."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        candidates = np.flatnonzero(labels == label)
        if per_class > len(candidates):
            raise ValueError(f"{per_class} samples per class requested but class {label} has "
                             f"{len(candidates)}; lower the per-class size")
        chosen.append(rng.choice(candidates, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _mentr_auc(logits: np.ndarray, labels: np.ndarray, member_rows: np.ndarray,
               nonmember_logits: np.ndarray, nonmember_labels: np.ndarray,
               nonmember_rows: np.ndarray) -> float:
    """AUC of -Mentr (higher means member) of the given members against non-members."""
    member_scores = mi.mentr_membership_score(logits[member_rows], labels[member_rows])
    nonmember_scores = mi.mentr_membership_score(nonmember_logits[nonmember_rows],
                                                 nonmember_labels[nonmember_rows])
    return mi.auc(member_scores, nonmember_scores)


def _measure_fine_tuning(frozen: FeatureExtractor, train_images: np.ndarray,
                         train_labels: np.ndarray, n_members: int, test: ImageSet, *,
                         target_class: int, num_classes: int, config: FineTuningConfig,
                         cache_dir: str, chunk_size: int, progress: bool) -> dict[str, np.ndarray]:
    """Fine-tune on (train_images, train_labels) and measure h, Mentr AUC and accuracy.

    The first `n_members` training rows are D_clean members. Every metric is also
    measured for the model fine-tuning starts from (frozen g with the initial head).
    """
    frozen_train = cached_features(frozen, train_images, cache_dir=cache_dir,
                                   tag="finetune/train", progress=False)
    frozen_test = cached_features(frozen, test.images, cache_dir=cache_dir,
                                  tag="finetune/test", progress=False)
    head = initial_head(frozen_train, train_labels, num_classes=num_classes, config=config)
    result = fine_tune(frozen, head, train_images, train_labels, config=config,
                       progress=progress)
    tuned = result.classifier
    tuned_train = extract_features(tuned.extractor, train_images, progress=False)
    tuned_test = extract_features(tuned.extractor, test.images, progress=False)
    is_member = np.arange(len(train_labels)) < n_members
    member_rows = np.flatnonzero(is_member & (train_labels == target_class))
    nonmember_rows = np.flatnonzero(test.labels == target_class)

    measured = {}
    for prefix, features_train, features_test, model_head in (
            ("frozen_", frozen_train, frozen_test, head),
            ("", tuned_train, tuned_test, tuned.head)):
        logits_train = head_logits(model_head, features_train)
        logits_test = head_logits(model_head, features_test)
        measured[prefix + "h"] = h_of_members(
            features_train, train_labels, is_member=is_member, target_classes=[target_class],
            chunk_size=chunk_size)[target_class]
        measured[prefix + "mentr_auc"] = _mentr_auc(logits_train, train_labels, member_rows,
                                                    logits_test, test.labels, nonmember_rows)
        measured[prefix + "test_accuracy"] = accuracy(logits_test, test.labels)
        measured[prefix + "member_accuracy"] = accuracy(logits_train[is_member],
                                                        train_labels[is_member])
    shift = np.linalg.norm(tuned_train - frozen_train, axis=1)
    measured["feature_shift"] = np.median(shift / np.linalg.norm(frozen_train, axis=1))
    measured["weight_change"] = weight_change(frozen.backbone, tuned.extractor.backbone)
    measured["batch_norm_change"] = batch_norm_statistics_change(frozen.backbone,
                                                                 tuned.extractor.backbone)
    measured["epoch_losses"] = result.epoch_losses
    measured["seconds"] = result.seconds
    return measured


def fine_tuning_runs(study: Study, *, attacks: Sequence[str], target_classes: Sequence[int],
                     budget: int, seed: int, crafting: CraftingConfig, input_size: int,
                     members_per_class: int | None, config: FineTuningConfig, store_dir: str,
                     chunk_size: int = 1024, progress: bool = True
                     ) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """Fine-tune one classifier per attack and target class and measure it.

    D_train is a class-balanced subset of D_clean (`members_per_class` per class, all
    members when None) plus the study's D_poison for the attack. The same number of
    non-members per class forms the test set; its target-class images are the
    non-members of the membership-inference AUC. The extractor is the study's, rebuilt
    at `input_size`. The poisons are the study's, crafted against its frozen g.

    Each run's measurements are stored under `store_dir`, keyed by every input, so a
    rerun loads them.

    Returns:
        (attack, target class) -> measurements: ``h``, ``mentr_auc``,
        ``test_accuracy``, ``member_accuracy`` of the fine-tuned model, the same with
        the prefix ``frozen_`` for the model fine-tuning starts from, ``feature_shift``
        (median relative change of the members' features), ``weight_change`` (relative
        change of g's parameters), ``batch_norm_change`` (relative change of g's
        batch-norm running statistics), ``epoch_losses`` and ``seconds``.
    """
    members, nonmembers = study.splits.members, study.splits.nonmembers
    member_subset = members.subset(balanced_subset(members.labels, per_class=members_per_class,
                                                   seed=seed))
    test = nonmembers.subset(balanced_subset(nonmembers.labels, per_class=members_per_class,
                                             seed=seed))
    frozen = build_extractor(study.extractor.name, input_size=input_size,
                             pretrained=study.extractor.pretrained)
    runs = {}
    jobs = [(attack, t) for t in target_classes for attack in attacks]
    for attack, t in tqdm(jobs, desc="case study 3: fine-tuning", disable=not progress):
        poisoning = study.poisoning_set(attack, target_class=t, budget=budget, seed=seed,
                                        crafting=crafting, progress=False)
        train_images = np.concatenate([member_subset.images, poisoning.images])
        train_labels = np.concatenate([member_subset.labels, poisoning.labels])
        key = json.dumps({
            "attack": attack, "target_class": t, "extractor": frozen.cache_tag,
            "train": images_digest(train_images), "labels": train_labels.tolist(),
            "test": images_digest(test.images), "config": asdict(config),
        }, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        path = f"{store_dir}/{attack}-t{t}-{digest}.npz"
        runs[attack, t] = cached_arrays(path, lambda: _measure_fine_tuning(
            frozen, train_images, train_labels, len(member_subset), test, target_class=t,
            num_classes=study.num_classes, config=config, cache_dir=str(study.cache_dir),
            chunk_size=chunk_size, progress=False))
        log.info("fine-tuned %s t=%d: Mentr AUC %.3f (before %.3f), weight change %.2e",
                 attack, t, runs[attack, t]["mentr_auc"], runs[attack, t]["frozen_mentr_auc"],
                 runs[attack, t]["weight_change"])
    return runs


def fine_tuning_table(runs: Mapping[tuple[str, int], Mapping[str, np.ndarray]], *,
                      class_names: Sequence[str]) -> pd.DataFrame:
    """Summarise fine-tuning runs per attack: h, Mentr AUC and accuracy, after and before.

    The h quantiles are those of the class-averaged distribution. AUC, accuracies and
    changes are means over the target classes.
    """
    rows = []
    for attack in dict.fromkeys(attack for attack, _ in runs):
        per_class = {t: run for (a, t), run in runs.items() if a == attack}
        tuned_h = {t: run["h"] for t, run in per_class.items()}
        frozen_h = {t: run["frozen_h"] for t, run in per_class.items()}

        def mean(key: str) -> float:
            return float(np.mean([run[key] for run in per_class.values()]))

        rows.append({
            "attack": plots.ATTACK_LABELS.get(attack, attack),
            "target classes": ", ".join(class_names[t] for t in per_class),
            "median h": averaged_quantile(tuned_h, 0.5),
            "p10 h": averaged_quantile(tuned_h, 0.1),
            "Mentr AUC": mean("mentr_auc"),
            "test accuracy": mean("test_accuracy"),
            "median h before": averaged_quantile(frozen_h, 0.5),
            "Mentr AUC before": mean("frozen_mentr_auc"),
            "test accuracy before": mean("frozen_test_accuracy"),
            "weight change": mean("weight_change"),
            "batch-norm statistics change": mean("batch_norm_change"),
            "feature shift": mean("feature_shift"),
        })
    return pd.DataFrame(rows).set_index("attack")


# ---------------------------------------------------------------------------------------
# Figures and tables of case studies 2 and 3.

SPACE_TITLES = {"features": "feature space", "input": "input space"}


def shadow_pool_figure(curves: Mapping[str, Mapping[int, HCurves]], *,
                       class_names: Sequence[str], colors: Mapping[str, str],
                       styles: Mapping[str, str] | None = None) -> plt.Figure:
    """Draw case study 2: one row of panels per space, one column per target class."""
    spaces = list(curves)
    classes = list(next(iter(curves.values())))
    figure, axes = plt.subplots(len(spaces), len(classes), figsize=(4.2 * len(classes),
                                3.4 * len(spaces)), squeeze=False, sharey=True)
    for row, space in enumerate(spaces):
        for column, t in enumerate(classes):
            axis = axes[row, column]
            plot_h_cdfs(axis, curves[space][t], colors=colors, styles=styles)
            axis.set_title(f"{SPACE_TITLES.get(space, space)}, class {class_names[t]}")
    add_figure_legend(figure, axes[0, 0], columns=len(next(iter(curves[spaces[0]].values()))))
    figure.tight_layout()
    return figure


def shadow_pool_table(curves: Mapping[str, Mapping[int, HCurves]], *,
                      class_names: Sequence[str]) -> pd.DataFrame:
    """`h_table` of every panel of case study 2, one row per space, class and curve."""
    parts = []
    for space, panels in curves.items():
        for t, panel in panels.items():
            part = h_table(panel, class_names=class_names).drop(columns="target classes")
            part.insert(0, "target class", class_names[t])
            part.insert(0, "space", SPACE_TITLES.get(space, space))
            parts.append(part)
    return pd.concat(parts)


def fine_tuning_curves(runs: Mapping[tuple[str, int], Mapping[str, np.ndarray]]
                       ) -> tuple[HCurves, HCurves]:
    """Split fine-tuning runs into h curves per attack: (fine-tuned, before fine-tuning)."""
    tuned: HCurves = {}
    before: HCurves = {}
    for (attack, t), run in runs.items():
        tuned.setdefault(attack, {})[t] = run["h"]
        before.setdefault(attack, {})[t] = run["frozen_h"]
    return tuned, before
