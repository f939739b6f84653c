"""The two poisoning attacks: dirty-label and clean-label (feature collision).

Both attacks spend a budget of b images against a target class t, where C is the number of
classes. b - b//C of them are poisons. The other b//C are correctly labelled target-class
images from the attacker pool, so that D_poison looks class-balanced.

* Dirty-label: the poisons are target-class pool images, each relabelled uniformly at
  random to one of the other classes.
* Clean-label: seeds are pool images of the other classes (balanced over them) that keep
  their true labels. Seed i is paired with base i, a target-class pool image, and perturbed
  within an L-infinity ball of radius eps (in [0, 1] pixel space) to minimise
  ``||g(seed + delta) - g(base)||^2``. The ball is enforced by the tanh reparametrisation
  delta = eps * tanh(w) and the pixel range by clipping; Adam with a step-decay schedule
  minimises the loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import ImageSet
from .extractors import FeatureExtractor, clip_unit, to_unit_tensor
from .features import best_device, images_digest
from .store import load_arrays, save_arrays

log = logging.getLogger(__name__)

ATTACKS = ("none", "dirty_label", "clean_label")


@dataclass(frozen=True)
class PoisoningSet:
    """D_poison: poisons plus balancing images, as given to the model.

    Attributes:
        attack: "none", "dirty_label" or "clean_label".
        target_class: t.
        images: uint8 NHWC images (pool resolution).
        labels: labels given to the model.
        true_labels: the images' true classes (the seed's class for clean-label poisons).
        is_poison: False for the balancing images.
        pool_index: index in the attacker pool of each image (the seed, for clean-label).
        base_index: pool index of the base a clean-label poison collides with, else -1.
        distance_before: ||g(seed) - g(base)|| per clean-label poison, else NaN.
        distance_after: ||g(poison) - g(base)|| after crafting and uint8 rounding, else NaN.
        seconds_per_poison: wall time of crafting divided by the number of poisons.
    """

    attack: str
    target_class: int
    images: np.ndarray
    labels: np.ndarray
    true_labels: np.ndarray
    is_poison: np.ndarray
    pool_index: np.ndarray
    base_index: np.ndarray
    distance_before: np.ndarray
    distance_after: np.ndarray
    seconds_per_poison: float = 0.0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def poisons(self) -> np.ndarray:
        """Indices of the poisons (balancing images excluded)."""
        return np.flatnonzero(self.is_poison)

    def save(self, path: str | Path) -> Path:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        arrays["attack"] = np.array(self.attack)
        return save_arrays(path, arrays)

    @classmethod
    def load(cls, path: str | Path) -> PoisoningSet:
        arrays = load_arrays(path)
        return cls(attack=str(arrays.pop("attack")), target_class=int(arrays.pop("target_class")),
                   seconds_per_poison=float(arrays.pop("seconds_per_poison")), **arrays)


def split_budget(budget: int, num_classes: int) -> tuple[int, int]:
    """Return (poisons, balancing images) for a budget: b - b//C and b//C."""
    balancing = budget // num_classes
    return budget - balancing, balancing


def _check_budget(pool: ImageSet, target_class: int, budget: int) -> np.ndarray:
    """Return the pool indices of the target class, after validating the request."""
    if not 0 <= target_class < pool.num_classes:
        raise ValueError(f"target_class must lie in [0, {pool.num_classes}), got {target_class}")
    if budget < pool.num_classes:
        raise ValueError(f"b_poison={budget} is smaller than the number of classes "
                         f"({pool.num_classes}); use at least {pool.num_classes}")
    candidates = np.flatnonzero(pool.labels == target_class)
    if budget > len(candidates):
        raise ValueError(
            f"b_poison={budget} exceeds the {len(candidates)} images of target class "
            f"{pool.class_names[target_class]!r} in the attacker pool {pool.name}; lower "
            "b_poison or enlarge the pool (pool_per_class)"
        )
    return candidates


def no_poisoning(pool: ImageSet, *, target_class: int) -> PoisoningSet:
    """Return an empty D_poison, for the clean baseline."""
    empty_int = np.zeros(0, dtype=np.int64)
    return PoisoningSet("none", target_class, pool.images[:0], empty_int, empty_int,
                        np.zeros(0, dtype=bool), empty_int, empty_int,
                        np.zeros(0), np.zeros(0))


def dirty_label(pool: ImageSet, *, target_class: int, budget: int, seed: int) -> PoisoningSet:
    """Build a dirty-label D_poison: relabelled target-class images plus balancing images.

    Args:
        pool: the attacker pool D_shadow.
        target_class: t.
        budget: b_poison, the size of D_poison.
        seed: seed of the image choice and of the wrong labels.

    Returns:
        The `PoisoningSet`; no label of a poison equals `target_class`.
    """
    candidates = _check_budget(pool, target_class, budget)
    num_poisons, num_balancing = split_budget(budget, pool.num_classes)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=budget, replace=False)
    other_classes = np.delete(np.arange(pool.num_classes), target_class)
    labels = np.concatenate([rng.choice(other_classes, size=num_poisons),
                             np.full(num_balancing, target_class)])
    is_poison = np.arange(budget) < num_poisons
    nan = np.full(budget, np.nan)
    return PoisoningSet("dirty_label", target_class, pool.images[chosen], labels.astype(np.int64),
                        pool.labels[chosen], is_poison, chosen.astype(np.int64),
                        np.full(budget, -1, dtype=np.int64), nan, nan.copy())


@dataclass(frozen=True)
class CraftingConfig:
    """Optimiser settings of the feature-collision attack (defaults: the authors').

    Attributes:
        eps: L-infinity radius in [0, 1] pixel space.
        iterations: Adam steps per batch of poisons.
        lr: initial Adam learning rate.
        batch_size: poisons crafted together.
        decay: learning-rate factor applied when the loss stalls.
        decay_every: iterations between two stall checks.
        min_improvement: relative loss decrease below which a check counts as a stall.
    """

    eps: float = 16 / 255
    iterations: int = 1000
    lr: float = 0.01
    batch_size: int = 200
    decay: float = 0.8
    decay_every: int = 50
    min_improvement: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must lie in (0, 1] (pixel scale [0, 1]; 16/255 = "
                             f"{16 / 255:.4f} in the study), got {self.eps}")
        if self.iterations < 1 or self.batch_size < 1 or self.decay_every < 1:
            raise ValueError(f"iterations, batch_size and decay_every must be positive: {self}")


def _balanced_seed_indices(pool: ImageSet, target_class: int, count: int,
                           rng: np.random.Generator) -> np.ndarray:
    """Pick `count` pool images of the non-target classes, as evenly as possible."""
    other_classes = np.delete(np.arange(pool.num_classes), target_class)
    per_class = np.full(len(other_classes), count // len(other_classes))
    per_class[rng.permutation(len(other_classes))[:count % len(other_classes)]] += 1
    chosen = []
    for label, requested in zip(other_classes, per_class):
        available = np.flatnonzero(pool.labels == label)
        if requested > len(available):
            raise ValueError(
                f"clean-label seeds: {requested} images of class {pool.class_names[label]!r} "
                f"needed but the attacker pool {pool.name} has {len(available)}; lower "
                "b_poison or enlarge the pool"
            )
        chosen.append(rng.choice(available, size=requested, replace=False))
    return np.concatenate(chosen)


def craft_feature_collisions(extractor: FeatureExtractor, seeds: np.ndarray, bases: np.ndarray,
                             *, config: CraftingConfig, device: torch.device | None = None,
                             progress: bool = True) -> np.ndarray:
    """Perturb each seed within eps so that its features approach its base's.

    Args:
        extractor: the frozen g the attacker uses.
        seeds: uint8 NHWC seed images.
        bases: uint8 NHWC base images, one per seed (any size; only g(base) is used).
        config: optimiser settings.
        device: where to run; `best_device()` when None.
        progress: show a progress bar over batches.

    Returns:
        uint8 poisons with the seeds' shape, each within eps of its seed (after rounding).
    """
    device = device or best_device()
    extractor = extractor.to(device).eval()
    poisons = np.empty_like(seeds)
    steps = range(0, len(seeds), config.batch_size)
    for start in tqdm(steps, desc="crafting clean-label poisons", disable=not progress,
                      unit="batch"):
        batch = slice(start, start + config.batch_size)
        seed_images = torch.as_tensor(seeds[batch]).permute(0, 3, 1, 2).float().div(255).to(device)
        with torch.no_grad():
            base_features = extractor(to_unit_tensor(bases[batch]).to(device))
        # delta = eps * tanh(w) keeps every perturbation inside the L-infinity ball for any w,
        # and w = 0 starts at the seed. The clip to [0, 1] lets gradients through unchanged
        # (straight-through), so pixels that start at 0 or 255 (most of MNIST) can move inwards.
        # NOTE: the authors describe a tanh reparametrisation of the box without its exact
        # form. Mapping tanh onto the whole box [max(0, x - eps), min(1, x + eps)] was tried
        # first and left pixels at 0 or 255 stuck at the edge, where tanh's gradient vanishes.
        w = torch.zeros_like(seed_images, requires_grad=True)
        optimizer = torch.optim.Adam([w], lr=config.lr)
        previous_loss = math.inf
        for iteration in range(1, config.iterations + 1):
            perturbed = clip_unit(seed_images + config.eps * torch.tanh(w))
            loss = (extractor(perturbed) - base_features).pow(2).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if iteration % config.decay_every == 0:
                current = loss.item()
                if current > (1 - config.min_improvement) * previous_loss:
                    for group in optimizer.param_groups:
                        group["lr"] *= config.decay
                previous_loss = current
        with torch.no_grad():
            perturbed = (seed_images + config.eps * torch.tanh(w)).clamp(0.0, 1.0)
        poisons[batch] = _round_within(perturbed, seeds[batch], config.eps)
    return poisons


def _round_within(perturbed: torch.Tensor, seeds: np.ndarray, eps: float) -> np.ndarray:
    """Round [0, 1] NCHW images to uint8 NHWC, keeping |poison - seed| <= eps after rounding."""
    rounded = np.rint(perturbed.permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.int64)
    radius = int(math.floor(eps * 255 + 1e-9))
    seeds_int = seeds.astype(np.int64)
    return np.clip(rounded, seeds_int - radius, seeds_int + radius).clip(0, 255).astype(np.uint8)


@torch.no_grad()
def _feature_distances(extractor: FeatureExtractor, images: np.ndarray, bases: np.ndarray,
                       device: torch.device, batch_size: int = 256) -> np.ndarray:
    distances = []
    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        features = extractor(to_unit_tensor(images[batch]).to(device))
        base_features = extractor(to_unit_tensor(bases[batch]).to(device))
        distances.append((features - base_features).norm(dim=1).cpu().numpy())
    return np.concatenate(distances) if distances else np.zeros(0)


def clean_label(pool: ImageSet, extractor: FeatureExtractor, *, target_class: int, budget: int,
                seed: int, config: CraftingConfig = CraftingConfig(),
                device: torch.device | None = None, progress: bool = True) -> PoisoningSet:
    """Build a clean-label D_poison by feature collision.

    Args:
        pool: the attacker pool D_shadow.
        extractor: the frozen g the attacker crafts against.
        target_class: t.
        budget: b_poison, the size of D_poison.
        seed: seed of the choice of seeds, bases and balancing images.
        config: optimiser settings (eps, iterations, ...).
        device: where to craft; `best_device()` when None.
        progress: show progress bars.

    Returns:
        The `PoisoningSet`; poisons keep their seeds' true labels.
    """
    candidates = _check_budget(pool, target_class, budget)
    num_poisons, num_balancing = split_budget(budget, pool.num_classes)
    rng = np.random.default_rng(seed)
    seed_indices = _balanced_seed_indices(pool, target_class, num_poisons, rng)
    target_indices = rng.choice(candidates, size=budget, replace=False)
    base_indices, balancing_indices = target_indices[:num_poisons], target_indices[num_poisons:]

    device = device or best_device()
    started = time.perf_counter()
    poisons = craft_feature_collisions(extractor, pool.images[seed_indices],
                                       pool.images[base_indices], config=config, device=device,
                                       progress=progress)
    seconds_per_poison = (time.perf_counter() - started) / max(num_poisons, 1)
    before = _feature_distances(extractor, pool.images[seed_indices], pool.images[base_indices],
                                device)
    after = _feature_distances(extractor, poisons, pool.images[base_indices], device)
    log.info("clean-label t=%d: %d poisons, mean feature distance %.3f -> %.3f",
             target_class, num_poisons, before.mean(), after.mean())

    nan = np.full(num_balancing, np.nan)
    pool_index = np.concatenate([seed_indices, balancing_indices]).astype(np.int64)
    return PoisoningSet(
        attack="clean_label",
        target_class=target_class,
        images=np.concatenate([poisons, pool.images[balancing_indices]]),
        labels=pool.labels[pool_index].astype(np.int64),
        true_labels=pool.labels[pool_index].astype(np.int64),
        is_poison=np.arange(budget) < num_poisons,
        pool_index=pool_index,
        base_index=np.concatenate([base_indices, np.full(num_balancing, -1)]).astype(np.int64),
        distance_before=np.concatenate([before, nan]),
        distance_after=np.concatenate([after, nan]),
        seconds_per_poison=seconds_per_poison,
    )


@dataclass(frozen=True)
class PoisoningRequest:
    """Everything that determines a poisoning set; its hash names the stored file.

    `pool` includes a digest of the pool's images, so a changed split never reuses a set.
    """

    attack: str
    dataset: str
    pool: str
    extractor: str
    target_class: int
    budget: int
    seed: int
    crafting: dict = field(default_factory=dict)

    def key(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
        return f"{self.dataset}-{self.attack}-{self.extractor}-t{self.target_class}-{digest}"


def _poisoning_request(attack: str, pool: ImageSet, *, target_class: int, budget: int,
                       seed: int, extractor: FeatureExtractor | None, config: CraftingConfig,
                       dataset: str) -> PoisoningRequest:
    if attack not in ATTACKS[1:]:
        raise ValueError(f"no stored set for attack {attack!r}; stored attacks: {ATTACKS[1:]}")
    if attack == "clean_label" and extractor is None:
        raise ValueError("the clean-label attack needs the attacker's extractor")
    return PoisoningRequest(
        attack=attack, dataset=dataset, pool=f"{pool.name}:{images_digest(pool.images)}",
        extractor=extractor.cache_tag if attack == "clean_label" else "any-extractor",
        target_class=target_class, budget=budget, seed=seed,
        crafting=asdict(config) if attack == "clean_label" else {},
    )


def poisoning_set_path(attack: str, pool: ImageSet, *, target_class: int, budget: int,
                       seed: int, store_dir: str | Path, extractor: FeatureExtractor | None = None,
                       config: CraftingConfig = CraftingConfig(), dataset: str = "") -> Path:
    """Return the file under `store_dir` that stores (or will store) this poisoning set."""
    request = _poisoning_request(attack, pool, target_class=target_class, budget=budget,
                                 seed=seed, extractor=extractor, config=config, dataset=dataset)
    return Path(store_dir) / f"{request.key()}.npz"


def make_poisoning_set(attack: str, pool: ImageSet, *, target_class: int, budget: int, seed: int,
                       extractor: FeatureExtractor | None = None,
                       config: CraftingConfig = CraftingConfig(), store_dir: str | Path | None = None,
                       dataset: str = "", device: torch.device | None = None,
                       progress: bool = True) -> PoisoningSet:
    """Build D_poison for `attack`, reusing a stored copy under `store_dir` when present.

    Args:
        attack: one of `ATTACKS`.
        pool: the attacker pool.
        target_class, budget, seed: as in `dirty_label` / `clean_label`.
        extractor: required for "clean_label".
        config: crafting settings for "clean_label".
        store_dir: folder of stored poisoning sets shared by the notebooks of one run;
            None disables storage.
        dataset: name of the members' dataset, part of the stored file's key.
        device, progress: as in `clean_label`.

    Returns:
        The `PoisoningSet`.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {ATTACKS}")
    if attack == "none":
        return no_poisoning(pool, target_class=target_class)
    request = _poisoning_request(attack, pool, target_class=target_class, budget=budget,
                                 seed=seed, extractor=extractor, config=config, dataset=dataset)
    path = Path(store_dir) / f"{request.key()}.npz" if store_dir is not None else None
    if path is not None and path.exists():
        log.info("reusing poisoning set %s", path)
        return PoisoningSet.load(path)
    if attack == "dirty_label":
        result = dirty_label(pool, target_class=target_class, budget=budget, seed=seed)
    else:
        result = clean_label(pool, extractor, target_class=target_class, budget=budget,
                             seed=seed, config=config, device=device, progress=progress)
    if path is not None:
        if path.exists():  # another run stored the same set meanwhile: keep one copy
            log.info("keeping the poisoning set another run stored at %s", path)
            return PoisoningSet.load(path)
        result.save(path)
        path.with_suffix(".json").write_text(json.dumps(asdict(request), indent=2) + "\n")
    return result
