"""LiRA with shadow models on a poisoned (or clean) training set.

The setting of Tramer et al., *Truth Serum* (CCS 2022), as the study uses it: the
population is D_clean ∪ D_test. The target model trains on D_clean plus D_poison. Each
of M shadow models trains on a random half of the population plus the same D_poison,
because the attacker has its own poisons. Every population sample is IN for exactly
M/2 shadow models (the balanced assignment of Carlini et al.'s reference code).
Membership is then judged on the target class: its members against its non-members.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import mi
from .experiment import TrainingData
from .heads import train_head, train_heads
from .store import cached_arrays

log = logging.getLogger(__name__)


def balanced_in_masks(num_samples: int, num_models: int, *, seed: int) -> np.ndarray:
    """Assign samples to shadow models so that each sample is IN for exactly M // 2 models.

    Returns:
        bool array (num_models, num_samples).
    """
    if num_models < 4:
        raise ValueError(f"n_shadow must be at least 4 (2 IN and 2 OUT per sample), got "
                         f"{num_models}")
    rng = np.random.default_rng(seed)
    ranks = rng.uniform(size=(num_models, num_samples)).argsort(axis=0).argsort(axis=0)
    return ranks < num_models // 2


@dataclass(frozen=True)
class LiraRun:
    """Logits of the target and shadow models on the population.

    Attributes:
        population_labels: true labels (N,), members first, then non-members.
        is_member: whether each population sample is in D_clean (the target's data).
        target_logits: (N, C) logits of the target model.
        shadow_logits: (M, N, C) logits of the shadow models.
        shadow_in: (M, N) whether each shadow model trained on each sample.
    """

    population_labels: np.ndarray
    is_member: np.ndarray
    target_logits: np.ndarray
    shadow_logits: np.ndarray
    shadow_in: np.ndarray

    def as_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)


def run_shadow_models(training: TrainingData, nonmember_features: np.ndarray,
                      nonmember_labels: np.ndarray, *, num_classes: int, n_shadow: int,
                      seed: int, epochs: int = 20, batch_size: int = 100, lr: float = 1e-3,
                      device: torch.device | None = None, progress: bool = True) -> LiraRun:
    """Train the target model and `n_shadow` shadow models; return their logits.

    Args:
        training: D_clean followed by D_poison (`Study.training_data`).
        nonmember_features: features of D_test.
        nonmember_labels: labels of D_test.
        num_classes: C.
        n_shadow: number of shadow models M (at least 4; the paper uses 128).
        seed: seed of the IN/OUT assignment and of every model's training.
        epochs, batch_size, lr: head training settings for target and shadows alike.
        device: where to train.
        progress: show progress bars.

    Returns:
        The `LiraRun`.
    """
    is_clean = training.groups == 0
    poison_features = training.features[~is_clean]
    poison_labels = training.labels[~is_clean]
    member_features, member_labels = training.features[is_clean], training.labels[is_clean]

    population_features = np.concatenate([member_features, nonmember_features])
    population_labels = np.concatenate([member_labels, nonmember_labels])
    is_member = np.arange(len(population_labels)) < len(member_labels)

    target = train_head(training.features, training.labels, num_classes=num_classes,
                        seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                        device=device, progress=False)
    target_logits = target.logits(population_features)[0]

    shadow_in = balanced_in_masks(len(population_labels), n_shadow, seed=seed)
    all_features = np.concatenate([population_features, poison_features])
    all_labels = np.concatenate([population_labels, poison_labels])
    masks = np.concatenate([shadow_in, np.ones((n_shadow, len(poison_labels)), bool)], axis=1)
    shadows = train_heads(all_features, all_labels, num_classes=num_classes, train_masks=masks,
                          seeds=[seed + 1 + m for m in range(n_shadow)], epochs=epochs,
                          batch_size=batch_size, lr=lr, device=device, progress=progress)
    return LiraRun(population_labels, is_member, target_logits,
                   shadows.logits(population_features), shadow_in)


def lira_scores(run: LiraRun, *, target_class: int, online: bool = True,
                fix_variance: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """LiRA membership scores (higher = member) of the target class's members and non-members.

    `fix_variance` fits one standard deviation over all examples instead of one per
    example, which Carlini et al. recommend when there are few shadow models.

    Raises:
        ValueError: the target class has no samples in the population.
    """
    in_class = run.population_labels == target_class
    if not in_class.any():
        raise ValueError(f"target class {target_class} has no samples in the population")
    labels = run.population_labels[in_class]
    target_scores = mi.logit_scaled_confidence(run.target_logits[in_class], labels)
    shadow_scores = mi.logit_scaled_confidence(run.shadow_logits[:, in_class], labels)
    attack = mi.lira_online if online else mi.lira_offline
    scores = attack(target_scores, shadow_scores, run.shadow_in[:, in_class],
                    fix_variance=fix_variance)
    members = run.is_member[in_class]
    return scores[members], scores[~members]


def evaluate_lira(run: LiraRun, *, target_class: int, fprs: tuple[float, ...] = (0.01, 0.001),
                  fix_variance: bool = False) -> dict[str, float]:
    """Membership metrics on the target class: target-class members vs non-members.

    Returns:
        A flat dict: ``lira_online_auc``, ``lira_online_tpr@<fpr>`` (NaN where the number
        of non-members cannot resolve the FPR), the same for ``lira_offline``,
        ``mentr_auc`` (the main paper's metric), ``test_accuracy`` (target model on all
        non-members) and ``target_class_test_accuracy``.
    """
    metrics: dict[str, float] = {}
    for name, online in (("lira_online", True), ("lira_offline", False)):
        member_scores, nonmember_scores = lira_scores(run, target_class=target_class,
                                                      online=online, fix_variance=fix_variance)
        result = mi.evaluate_attack(member_scores, nonmember_scores, fprs=fprs)
        metrics[f"{name}_auc"] = result.auc
        for fpr in fprs:
            metrics[f"{name}_tpr@{fpr:g}"] = result.tpr_at_fpr[fpr]

    in_class = run.population_labels == target_class
    mentr = mi.mentr_membership_score(run.target_logits[in_class], run.population_labels[in_class])
    members = run.is_member[in_class]
    metrics["mentr_auc"] = mi.auc(mentr[members], mentr[~members])

    nonmembers = ~run.is_member
    predictions = run.target_logits.argmax(axis=1)
    correct = predictions == run.population_labels
    metrics["test_accuracy"] = float(correct[nonmembers].mean())
    metrics["target_class_test_accuracy"] = float(correct[nonmembers & in_class].mean())
    return metrics


def load_or_run_shadow_models(store_dir: str | Path, training: TrainingData,
                              nonmember_features: np.ndarray, nonmember_labels: np.ndarray, *,
                              name: str, **settings) -> LiraRun:
    """`run_shadow_models`, stored under `store_dir` so that a rerun resumes.

    The file name combines `name` with a digest of the inputs and `settings`, so a run
    with other data or other settings (n_shadow, seed, epochs, ...) never reuses it.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for array in (training.features, training.labels, nonmember_features, nonmember_labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    path = Path(store_dir) / f"{name}-{digest.hexdigest()[:12]}.npz"
    arrays = cached_arrays(path, lambda: run_shadow_models(
        training, nonmember_features, nonmember_labels, **settings).as_arrays())
    return LiraRun(**arrays)
