"""DP-SGD as a defense: the head trained with and without Opacus, with learning curves.

`train_head_with_curves` trains one `Head` on frozen features, either with plain Adam on
shuffled mini-batches or with DP-SGD through Opacus: Poisson sampling, per-sample
gradient clipping, Gaussian noise and the RDP accountant. After every epoch it evaluates
the loss and accuracy of each group of samples it is given, for example the normal
samples (D_clean), the poisoning samples and the held-out non-members. `run_setting`
adds the test accuracy and the Mentr membership-inference AUC of the target class and
stores each run. `run_settings` and `noise_sweep` loop over attacks, target classes and
noise multipliers. `mexp_lib.dp_results` turns the runs into notebook C's tables,
figures and generated text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from . import mi
from .experiment import GROUP_MEMBER, GROUP_POISON, Study
from .features import best_device
from .heads import Head, init_head_parameters
from .poisoning import PoisoningSet
from .store import cached_arrays

log = logging.getLogger(__name__)

# Groups whose loss and accuracy are recorded after every epoch.
NORMAL, POISON, NONMEMBER = "normal", "poison", "nonmember"
CURVE_GROUPS = (NORMAL, POISON, NONMEMBER)
GROUP_LABELS = {NORMAL: "normal samples (D_clean)", POISON: "poisoning samples",
                NONMEMBER: "non-members (D_test)"}
GROUP_COLORS = {NORMAL: "#4c72b0", POISON: "#c44e52", NONMEMBER: "#8172b3"}

# Opacus's ghost clipping computes each sample's gradient norm without storing the
# per-sample gradients. Its clipped, noised update equals the one of the "hooks" mode
# (tests/test_dp.py checks this). For a head on 1280 features and 2,100 samples it took
# 0.13 s of CPU time per epoch against 1.6 s for "hooks" (Opacus 1.6.0, one CPU thread).
DEFAULT_GRAD_SAMPLE_MODE = "ghost"
GRAD_SAMPLE_MODES = ("ghost", "hooks")


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-SGD settings (defaults: the study's).

    Attributes:
        noise_multiplier: standard deviation of the Gaussian noise divided by
            `max_grad_norm` (sigma).
        max_grad_norm: L2 bound C to which each per-sample gradient is clipped.
        delta: the delta at which epsilon is reported.
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"noise_multiplier must be a finite number > 0, got "
                             f"{self.noise_multiplier}. For non-private training pass "
                             "privacy=None instead of a PrivacyConfig")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a finite number > 0, got "
                             f"{self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in the open interval (0, 1), got {self.delta}. "
                             "The study uses 1e-5")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser settings shared by private and non-private training.

    Attributes:
        epochs: passes over the training set.
        batch_size: mini-batch size. DP-SGD samples each example with probability
            1 / ceil(N / batch_size), so its expected batch is at most this size.
        lr: Adam learning rate.
    """

    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")


@dataclass
class TrainedHead:
    """A trained head and its per-epoch record.

    Attributes:
        head: the trained `Head`, on the CPU and without Opacus hooks.
        loss: group -> mean cross-entropy after each epoch, shape (epochs,); NaN for an
            empty group.
        accuracy: group -> top-1 accuracy after each epoch, shape (epochs,).
        epsilon: epsilon spent after each epoch at the configured delta; inf for
            non-private training.
    """

    head: Head
    loss: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    epsilon: np.ndarray


# --------------------------------------------------------------------------- training


def _child_seeds(entropy: int | Sequence[int], count: int) -> list[int]:
    """Derive `count` independent integer seeds from one seed or a tuple of them."""
    children = np.random.SeedSequence(entropy).spawn(count)
    return [int(child.generate_state(1)[0]) for child in children]


def _seeded_head(feature_dim: int, num_classes: int, seed: int) -> Head:
    """Build a `Head` initialised as `heads.train_heads` initialises model `seed`."""
    head = Head(feature_dim, num_classes)
    generator = torch.Generator().manual_seed(seed)
    hidden_weight, hidden_bias, output_weight, output_bias = init_head_parameters(
        feature_dim, num_classes, generator)
    with torch.no_grad():
        head.hidden.weight.copy_(hidden_weight.T)
        head.hidden.bias.copy_(hidden_bias)
        head.output.weight.copy_(output_weight.T)
        head.output.bias.copy_(output_bias)
    return head


@torch.no_grad()
def evaluate_head(head: nn.Module, features: np.ndarray, labels: np.ndarray, *,
                  device: torch.device, batch_size: int = 4096) -> tuple[float, float]:
    """Return (mean cross-entropy, accuracy) of `head` on features, (NaN, NaN) if empty."""
    if len(features) == 0:
        return math.nan, math.nan
    was_training = head.training
    head.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(features), batch_size):
        batch = torch.as_tensor(features[start:start + batch_size], dtype=torch.float32,
                                device=device)
        targets = torch.as_tensor(labels[start:start + batch_size], dtype=torch.int64,
                                  device=device)
        logits = head(batch)
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(dim=1) == targets).sum().item()
    head.train(was_training)
    return total_loss / len(features), correct / len(features)


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run PyTorch's CPU operations on one thread inside the block, then restore the count.

    The head's operations are too small to gain from intra-op threads. With the default
    two threads on a busy 2-core machine, five DP-SGD epochs on 2,000 x 1280 features took
    10.8 s of CPU time against 2.0 s on one thread (PyTorch 2.14, Opacus 1.6.0).
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _quiet_opacus() -> Iterator[None]:
    """Silence two warnings that every DP run would repeat.

    Opacus warns that its secure RNG is off. It is off on purpose: the experiments must
    be reproducible from a seed, and they measure DP-SGD as a defense, not deploy it.
    PyTorch warns that full backward hooks fire without input gradients, which is
    expected, because the frozen features do not require gradients.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def train_head_with_curves(features: np.ndarray, labels: np.ndarray, *, num_classes: int,
                           evaluation_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
                           seed: int, training: TrainingConfig = TrainingConfig(),
                           privacy: PrivacyConfig | None = None,
                           device: torch.device | None = None,
                           grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
                           progress: bool = False) -> TrainedHead:
    """Train a head with Adam, privately (DP-SGD via Opacus) or not, recording curves.

    Non-private training shuffles the samples and cuts them into mini-batches of
    `training.batch_size`. DP-SGD hands the same loader to
    `opacus.PrivacyEngine.make_private`, which replaces it with Poisson sampling at rate
    1 / ceil(N / batch_size), clips each sample's gradient to `privacy.max_grad_norm`,
    adds Gaussian noise and tracks epsilon with the RDP accountant.

    Args:
        features: float array (N, d) of training features.
        labels: int array (N,) of training labels (poison labels included).
        num_classes: C.
        evaluation_sets: group name -> (features, labels) evaluated after every epoch.
        seed: seeds the initialisation, the sampling and the noise.
        training: epochs, batch size and learning rate.
        privacy: DP-SGD settings; None trains without DP.
        device: where to train, a `torch.device` or its name; `best_device()` when None.
        grad_sample_mode: Opacus's per-sample gradient mode ("ghost" or "hooks").
        progress: show a progress bar over epochs.

    Returns:
        The `TrainedHead`.

    Raises:
        ValueError: the shapes of features and labels do not match, the training set is
            empty, a label lies outside [0, num_classes), or `grad_sample_mode` is
            unknown.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got "
                         f"{grad_sample_mode!r}")
    if features.ndim != 2 or labels.shape != (len(features),):
        raise ValueError(f"features must be (N, d) and labels (N,), got {features.shape} "
                         f"and {labels.shape}")
    if len(features) == 0:
        raise ValueError("the training set is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"[{labels.min()}, {labels.max()}]")
    device = torch.device(device) if device is not None else best_device()
    init_seed, sampling_seed, noise_seed = _child_seeds(seed, 3)
    head = _seeded_head(features.shape[1], num_classes, init_seed).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=training.lr)
    dataset = TensorDataset(torch.as_tensor(features, dtype=torch.float32),
                            torch.as_tensor(labels, dtype=torch.int64))
    loader = DataLoader(dataset, batch_size=training.batch_size, shuffle=privacy is None,
                        generator=torch.Generator().manual_seed(sampling_seed))

    loss_curves = {group: np.full(training.epochs, np.nan) for group in evaluation_sets}
    accuracy_curves = {group: np.full(training.epochs, np.nan) for group in evaluation_sets}
    epsilon = np.full(training.epochs, np.inf)
    with _quiet_opacus(), _one_thread_on_cpu(device):
        if privacy is None:
            model, criterion, engine = head, nn.CrossEntropyLoss(), None
        else:
            model, optimizer, criterion, loader, engine = _make_private(
                head, optimizer, loader, privacy=privacy, noise_seed=noise_seed,
                grad_sample_mode=grad_sample_mode)
        description = "DP-SGD" if privacy else "non-private"
        for epoch in tqdm(range(training.epochs), desc=f"training head ({description})",
                          disable=not progress, unit="epoch"):
            model.train()
            for batch_features, batch_labels in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(batch_features.to(device)), batch_labels.to(device))
                loss.backward()
                optimizer.step()
            for group, (group_features, group_labels) in evaluation_sets.items():
                loss_curves[group][epoch], accuracy_curves[group][epoch] = evaluate_head(
                    head, group_features, group_labels, device=device)
            if engine is not None:
                epsilon[epoch] = engine.get_epsilon(privacy.delta)
        if engine is not None:
            model.remove_hooks()
    head = head.cpu().eval()
    return TrainedHead(head, loss_curves, accuracy_curves, epsilon)


def _make_private(head: Head, optimizer: torch.optim.Optimizer, loader: DataLoader, *,
                  privacy: PrivacyConfig, noise_seed: int, grad_sample_mode: str):
    """Wrap model, optimizer, loss and loader with Opacus; also return the engine."""
    engine = PrivacyEngine(accountant="rdp")
    wrapped = engine.make_private(
        module=head, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), data_loader=loader,
        noise_multiplier=privacy.noise_multiplier, max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=True, clipping="flat", grad_sample_mode=grad_sample_mode,
        noise_generator=torch.Generator(device=next(head.parameters()).device)
        .manual_seed(noise_seed),
    )
    if grad_sample_mode == "ghost":
        model, optimizer, criterion, loader = wrapped
    else:
        (model, optimizer, loader), criterion = wrapped, nn.CrossEntropyLoss()
    return model, optimizer, criterion, loader, engine


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunResult:
    """Record of one trained head of notebook C: one attack, target class and privacy setting.

    Attributes:
        attack: "none", "dirty_label" or "clean_label".
        target_class: t.
        noise_multiplier: sigma of DP-SGD, or None for non-private training.
        loss: group -> training loss after each epoch (see `TrainedHead`).
        accuracy: group -> accuracy after each epoch.
        epsilon: epsilon after each epoch (inf without DP).
        delta: the delta of `epsilon`.
        test_accuracy: accuracy on all non-members after the last epoch.
        mi_auc: Mentr AUC on target-class members vs target-class non-members.
        num_poisons: poisoning samples in the training set (balancing images excluded).
    """

    attack: str
    target_class: int
    noise_multiplier: float | None
    loss: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    epsilon: np.ndarray
    delta: float
    test_accuracy: float
    mi_auc: float
    num_poisons: int

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None

    @property
    def final_epsilon(self) -> float:
        return float(self.epsilon[-1])


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(repr((array.shape, str(array.dtype))).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def run_setting(study: Study, poisoning: PoisoningSet, *, seed: int,
                training: TrainingConfig = TrainingConfig(),
                privacy: PrivacyConfig | None = None, store_dir: str | Path | None = None,
                device: torch.device | None = None,
                grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE) -> RunResult:
    """Train the head on D_clean + `poisoning` and measure its learning curves and leakage.

    The head's seed is derived from (`seed`, target class), so the private and the
    non-private head of one target class start from the same weights.

    Args:
        study: members, non-members and their features.
        poisoning: D_poison; its target class is the class whose membership is attacked.
        seed: seed of the run.
        training: epochs, batch size and learning rate.
        privacy: DP-SGD settings; None trains without DP.
        store_dir: folder where each run is stored as ``.npz`` and reused on the next
            call with the same inputs; None disables storage.
        device, grad_sample_mode: as in `train_head_with_curves`.

    Returns:
        The `RunResult`.
    """
    target_class = poisoning.target_class
    data = study.training_data(poisoning)
    is_normal, is_poison = data.groups == GROUP_MEMBER, data.groups == GROUP_POISON
    nonmember_labels = study.splits.nonmembers.labels
    member_labels = study.splits.members.labels
    evaluation_sets = {
        NORMAL: (data.features[is_normal], data.labels[is_normal]),
        POISON: (data.features[is_poison], data.labels[is_poison]),
        NONMEMBER: (study.nonmember_features, nonmember_labels),
    }

    def compute() -> dict[str, np.ndarray]:
        trained = train_head_with_curves(
            data.features, data.labels, num_classes=study.num_classes,
            evaluation_sets=evaluation_sets, seed=_child_seeds((seed, target_class), 1)[0],
            training=training, privacy=privacy, device=device,
            grad_sample_mode=grad_sample_mode)
        with torch.no_grad():
            member_logits = trained.head(torch.as_tensor(
                study.member_features[member_labels == target_class]))
            nonmember_logits = trained.head(torch.as_tensor(
                study.nonmember_features[nonmember_labels == target_class]))
        arrays = {"epsilon": trained.epsilon, "member_logits": member_logits.numpy(),
                  "nonmember_logits": nonmember_logits.numpy()}
        for group in CURVE_GROUPS:
            arrays[f"loss_{group}"] = trained.loss[group]
            arrays[f"accuracy_{group}"] = trained.accuracy[group]
        return arrays

    if store_dir is None:
        arrays = compute()
    else:
        request = {"attack": poisoning.attack, "target_class": target_class, "seed": seed,
                   "training": asdict(training),
                   "privacy": asdict(privacy) if privacy else None,
                   "grad_sample_mode": grad_sample_mode,
                   "data": _digest(data.features, data.labels, data.groups,
                                   study.nonmember_features, nonmember_labels)}
        key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:12]
        setting = f"sigma{privacy.noise_multiplier:g}" if privacy else "nonprivate"
        path = Path(store_dir) / f"{poisoning.attack}-t{target_class}-{setting}-{key}.npz"
        arrays = cached_arrays(path, compute)

    member_logits, nonmember_logits = arrays["member_logits"], arrays["nonmember_logits"]
    member_scores = mi.mentr_membership_score(
        member_logits, np.full(len(member_logits), target_class))
    nonmember_scores = mi.mentr_membership_score(
        nonmember_logits, np.full(len(nonmember_logits), target_class))
    return RunResult(
        attack=poisoning.attack, target_class=target_class,
        noise_multiplier=privacy.noise_multiplier if privacy else None,
        loss={group: arrays[f"loss_{group}"] for group in CURVE_GROUPS},
        accuracy={group: arrays[f"accuracy_{group}"] for group in CURVE_GROUPS},
        epsilon=arrays["epsilon"], delta=privacy.delta if privacy else math.nan,
        test_accuracy=float(arrays[f"accuracy_{NONMEMBER}"][-1]),
        mi_auc=mi.auc(member_scores, nonmember_scores),
        num_poisons=int(is_poison.sum()),
    )


def run_settings(study: Study, poisoning_sets: Mapping[str, Mapping[int, PoisoningSet]], *,
                 seed: int, training: TrainingConfig = TrainingConfig(),
                 privacy: PrivacyConfig = PrivacyConfig(),
                 store_dir: str | Path | None = None, device: torch.device | None = None,
                 progress: bool = True) -> list[RunResult]:
    """Run every attack and target class of `poisoning_sets` without and with DP-SGD.

    Args:
        poisoning_sets: attack -> target class -> D_poison.
        privacy: the DP-SGD settings of the private runs.
        study, seed, training, store_dir, device: as in `run_setting`.
        progress: show a progress bar over runs.

    Returns:
        One `RunResult` per attack, target class and privacy setting (non-private first).
    """
    jobs = [(poisoning, setting) for by_target in poisoning_sets.values()
            for poisoning in by_target.values() for setting in (None, privacy)]
    return _run_jobs(study, jobs, seed=seed, training=training, store_dir=store_dir,
                     device=device, description="training heads", progress=progress)


def noise_sweep(study: Study, poisoning_sets: Mapping[int, PoisoningSet], *,
                noise_multipliers: Sequence[float], seed: int,
                training: TrainingConfig = TrainingConfig(), max_grad_norm: float = 1.0,
                delta: float = 1e-5, store_dir: str | Path | None = None,
                device: torch.device | None = None, progress: bool = True) -> list[RunResult]:
    """Train one head per noise multiplier and target class, plus the non-private reference.

    Runs that `run_settings` already stored under `store_dir` with the same inputs are
    loaded, not trained again.

    Args:
        poisoning_sets: target class -> D_poison of one attack.
        noise_multipliers: the sigmas to sweep, each > 0.
        max_grad_norm, delta: as in `PrivacyConfig`, shared by every sigma.
        study, seed, training, store_dir, device: as in `run_setting`.
        progress: show a progress bar over runs.

    Returns:
        The `RunResult`s, non-private first, then by increasing sigma.

    Raises:
        ValueError: `noise_multipliers` is empty or contains duplicates or invalid values.
    """
    if len(noise_multipliers) == 0:
        raise ValueError("noise_multipliers is empty. Give at least one sigma > 0")
    if len(set(noise_multipliers)) != len(noise_multipliers):
        raise ValueError(f"noise_multipliers contains duplicates: {list(noise_multipliers)}")
    settings: list[PrivacyConfig | None] = [None] + [
        PrivacyConfig(noise_multiplier=float(sigma), max_grad_norm=max_grad_norm, delta=delta)
        for sigma in sorted(noise_multipliers)]
    jobs = [(poisoning, setting) for setting in settings
            for poisoning in poisoning_sets.values()]
    return _run_jobs(study, jobs, seed=seed, training=training, store_dir=store_dir,
                     device=device, description="noise sweep", progress=progress)


def _run_jobs(study: Study, jobs: Sequence[tuple[PoisoningSet, PrivacyConfig | None]], *,
              seed: int, training: TrainingConfig, store_dir: str | Path | None,
              device: torch.device | None, description: str, progress: bool
              ) -> list[RunResult]:
    """Run `run_setting` for each (D_poison, privacy setting) pair, in order."""
    return [run_setting(study, poisoning, seed=seed, training=training, privacy=setting,
                        store_dir=store_dir, device=device)
            for poisoning, setting in tqdm(jobs, desc=description, disable=not progress,
                                           unit="head")]
