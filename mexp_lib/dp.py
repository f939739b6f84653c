"""DP-SGD as a defense: the head trained with and without Opacus, with learning curves.

`train_head_with_curves` trains one `Head` on frozen features, either with plain Adam on
shuffled mini-batches or with DP-SGD through Opacus: Poisson sampling, per-sample
gradient clipping, Gaussian noise and the RDP accountant. After every epoch it evaluates
the loss and accuracy of each group of samples it is given, for example the normal
samples (D_clean), the poisoning samples and the held-out non-members. `run_setting`
adds the test accuracy and the Mentr membership-inference AUC of the target class and
stores each run. `run_settings` and `noise_sweep` loop over attacks, target classes and
noise multipliers. The rest of the module turns the runs into notebook C's tables,
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

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator, NullFormatter
import pandas as pd
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
from .plots import ATTACK_LABELS, mean_std_table_cell
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
    results = []
    for poisoning, setting in tqdm(jobs, desc="training heads", disable=not progress,
                                   unit="head"):
        results.append(run_setting(study, poisoning, seed=seed, training=training,
                                   privacy=setting, store_dir=store_dir, device=device))
    return results


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
    jobs = [(setting, poisoning) for setting in settings
            for poisoning in poisoning_sets.values()]
    results = []
    for setting, poisoning in tqdm(jobs, desc="noise sweep", disable=not progress,
                                   unit="head"):
        results.append(run_setting(study, poisoning, seed=seed, training=training,
                                   privacy=setting, store_dir=store_dir, device=device))
    return results


# --------------------------------------------------------------------------- tables


def results_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    """Tabulate the runs, one row each: setting, epsilon, test accuracy, MI AUC and
    last-epoch loss and accuracy per group."""
    rows = []
    for result in results:
        row = {"attack": result.attack, "target_class": result.target_class,
               "private": result.private,
               "noise_multiplier": result.noise_multiplier if result.private else np.nan,
               "epsilon": result.final_epsilon, "delta": result.delta,
               "test_accuracy": result.test_accuracy, "mi_auc": result.mi_auc}
        for group in CURVE_GROUPS:
            row[f"final_loss_{group}"] = float(result.loss[group][-1])
            row[f"final_accuracy_{group}"] = float(result.accuracy[group][-1])
        rows.append(row)
    return pd.DataFrame(rows)


def _training_name(noise_multiplier: float | None) -> str:
    if noise_multiplier is None:
        return "without DP-SGD"
    return f"with DP-SGD (σ = {noise_multiplier:g})"


def _epsilon_cell(values: Sequence[float]) -> str:
    """Format epsilons over target classes; ∞ without DP, one value when all agree."""
    values = np.asarray(values, dtype=float)
    if np.isinf(values).all():
        return "∞"
    if np.ptp(values) < 5e-3:
        return f"{values.mean():.2f}"
    return mean_std_table_cell(values, digits=2)


def _summary_table(results: Sequence[RunResult], index_name: str) -> pd.DataFrame:
    """Group runs by noise multiplier into 'mean ± std over target classes' cells."""
    deltas = {result.delta for result in results if result.private}
    epsilon_column = (f"ε (δ = {deltas.pop():g})" if len(deltas) == 1 else "ε")
    settings = sorted({result.noise_multiplier for result in results},
                      key=lambda sigma: -1.0 if sigma is None else sigma)
    rows = {}
    for sigma in settings:
        runs = [result for result in results if result.noise_multiplier == sigma]
        rows[_training_name(sigma)] = {
            epsilon_column: _epsilon_cell([run.final_epsilon for run in runs]),
            "test accuracy": mean_std_table_cell([run.test_accuracy for run in runs]),
            "MI AUC (Mentr)": mean_std_table_cell([run.mi_auc for run in runs]),
            "target classes": len(runs),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = index_name
    return table


def privacy_table(results: Sequence[RunResult], *, attack: str,
                  noise_multiplier: float) -> pd.DataFrame:
    """Summarise epsilon, test accuracy and MI AUC of `attack` without and with DP-SGD.

    Cells are mean ± std over target classes (std with ddof=0).
    """
    selected = [result for result in results if result.attack == attack
                and result.noise_multiplier in (None, noise_multiplier)]
    if not selected:
        raise ValueError(f"no runs of attack {attack!r} among the results")
    return _summary_table(selected, "training")


def sweep_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """Summarise epsilon, test accuracy and MI AUC per noise multiplier, non-private first.

    Cells are mean ± std over target classes (std with ddof=0).
    """
    return _summary_table(results, "training")


# --------------------------------------------------------------------------- figures


def _mean_and_std(curves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    stacked = np.stack(curves)
    return stacked.mean(axis=0), stacked.std(axis=0)


def _select(results: Sequence[RunResult], attack: str,
            noise_multiplier: float | None) -> list[RunResult]:
    return [result for result in results
            if result.attack == attack and result.noise_multiplier == noise_multiplier]


def curve_groups(attack: str) -> tuple[str, ...]:
    """Return the groups drawn for `attack`: normal and poisoning samples, or normal
    samples and non-members when there is no poisoning."""
    return (NORMAL, NONMEMBER) if attack == "none" else (NORMAL, POISON)


def plot_learning_curves(results: Sequence[RunResult], *, attack: str, num_classes: int,
                         noise_multiplier: float, title: str) -> plt.Figure:
    """Draw loss and accuracy per epoch, without (top) and with DP-SGD (bottom).

    Lines are the mean over target classes, bands ± one standard deviation. Accuracy
    panels have a dashed line at chance, 1 / num_classes.
    """
    rows = [(None, "(a) without DP-SGD"), (noise_multiplier, "(b) with DP-SGD")]
    figure, axes = plt.subplots(2, 2, figsize=(9, 6.4), sharex=True, squeeze=False)
    for row, (sigma, row_title) in enumerate(rows):
        runs = _select(results, attack, sigma)
        if not runs:
            raise ValueError(f"no runs of attack {attack!r} with noise multiplier {sigma}")
        epochs = np.arange(1, len(runs[0].epsilon) + 1)
        for group in curve_groups(attack):
            for column, curves in enumerate(([run.loss[group] for run in runs],
                                             [run.accuracy[group] for run in runs])):
                mean, std = _mean_and_std(curves)
                axis = axes[row, column]
                axis.plot(epochs, mean, color=GROUP_COLORS[group], label=GROUP_LABELS[group])
                axis.fill_between(epochs, mean - std, mean + std, color=GROUP_COLORS[group],
                                  alpha=0.2, linewidth=0)
        if sigma is not None:
            epsilon = np.mean([run.final_epsilon for run in runs])
            row_title += f", σ = {sigma:g}, ε = {epsilon:.2f} at δ = {runs[0].delta:g}"
        axes[row, 0].set_title(row_title, loc="left")
        axes[row, 0].set_ylabel("loss (cross-entropy, nats)")
        axes[row, 1].axhline(1 / num_classes, color="gray", linestyle="--", linewidth=1,
                             label=f"chance (1/{num_classes})")
        axes[row, 1].set_ylabel("accuracy")
        axes[row, 1].set_ylim(0, 1.02)
    for axis in axes[1]:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0, 1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels),
                  bbox_to_anchor=(0.5, -0.04))
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_noise_sweep(results: Sequence[RunResult], *, title: str) -> plt.Figure:
    """Draw MI AUC and test accuracy against epsilon, one point per noise multiplier.

    Points are the mean over target classes with ± one standard deviation as error bars.
    The non-private reference (epsilon = ∞) is a dashed horizontal line with its band.
    """
    frame = results_frame(results)
    private = frame[frame.private].groupby("noise_multiplier")
    reference = frame[~frame.private]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), squeeze=False)
    for axis, column, label in ((axes[0, 0], "mi_auc", "MI AUC (Mentr)"),
                                (axes[0, 1], "test_accuracy", "test accuracy")):
        if len(reference):
            mean, std = reference[column].mean(), reference[column].std(ddof=0)
            axis.axhline(mean, color="gray", linestyle="--", linewidth=1,
                         label="without DP-SGD (ε = ∞)")
            axis.axhspan(mean - std, mean + std, color="gray", alpha=0.15, linewidth=0)
        summary = private[["epsilon", column]].agg(["mean", "std"])
        epsilons = summary[("epsilon", "mean")]
        axis.errorbar(epsilons, summary[(column, "mean")],
                      yerr=private[column].std(ddof=0).fillna(0), marker="o", capsize=3,
                      color="#c44e52", label="with DP-SGD")
        for sigma, epsilon, value in zip(summary.index, epsilons, summary[(column, "mean")]):
            axis.annotate(f"σ = {sigma:g}", (epsilon, value), textcoords="offset points",
                          xytext=(4, 6), fontsize=8)
        axis.set_xscale("log")
        # Label the measured epsilons only, because a log axis over less than a decade
        # otherwise prints overlapping minor-tick labels.
        axis.set_xticks(epsilons.to_numpy(), [f"{epsilon:.3g}" for epsilon in epsilons])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("ε spent (log scale)")
        axis.set_ylabel(label)
    axes[0, 0].axhline(0.5, color="gray", linestyle=":", linewidth=1, label="chance (0.5)")
    axes[0, 0].legend(loc="best", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------- text


def chance_relation(accuracy: float, *, chance: float, num_samples: int) -> str:
    """Classify an accuracy as "near", "above" or "below" chance.

    "Near" means within two binomial standard errors, 2 * sqrt(p (1 - p) / n) with
    p = chance, of the chance level; n is the number of samples the accuracy averages.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    margin = 2 * math.sqrt(chance * (1 - chance) / num_samples)
    if abs(accuracy - chance) <= margin:
        return "near"
    return "above" if accuracy > chance else "below"


def _curve_summary(runs: Sequence[RunResult], group: str) -> dict[str, float]:
    """Average a group's first- and last-epoch loss and accuracy over target classes."""
    return {"loss_first": float(np.mean([run.loss[group][0] for run in runs])),
            "loss_last": float(np.mean([run.loss[group][-1] for run in runs])),
            "accuracy_first": float(np.mean([run.accuracy[group][0] for run in runs])),
            "accuracy_last": float(np.mean([run.accuracy[group][-1] for run in runs]))}


def _direction(first: float, last: float) -> str:
    if last > first:
        return "rose"
    if last < first:
        return "fell"
    return "stayed"


def describe_learning(results: Sequence[RunResult], *, attack: str, num_classes: int,
                      noise_multiplier: float) -> str:
    """Write a Markdown paragraph of what the learning curves of `attack` show.

    Every statement is computed from `results`. It uses the last-epoch accuracies and
    losses (mean over target classes) and their change from the first epoch. It also
    places the accuracy on poisoning samples relative to chance (see `chance_relation`)
    and compares the MI AUC without and with DP-SGD.
    """
    plain, private = _select(results, attack, None), _select(results, attack,
                                                             noise_multiplier)
    if not plain or not private:
        raise ValueError(f"need runs of attack {attack!r} without DP-SGD and with "
                         f"noise multiplier {noise_multiplier}")
    chance = 1 / num_classes
    auc_plain = mean_std_table_cell([run.mi_auc for run in plain])
    auc_private = mean_std_table_cell([run.mi_auc for run in private])
    name = ATTACK_LABELS.get(attack, attack)
    epsilon = np.mean([run.final_epsilon for run in private])
    lines = [f"**{name}, measured in this run** ({len(private)} target classes, "
             f"σ = {noise_multiplier:g}, ε = {epsilon:.2f}):"]
    if attack == "none":
        for label, runs in (("Without DP-SGD", plain), ("With DP-SGD", private)):
            normal, test = _curve_summary(runs, NORMAL), _curve_summary(runs, NONMEMBER)
            lines.append(
                f"- {label}, the last epoch reaches accuracy {normal['accuracy_last']:.3f} on "
                f"the normal samples and {test['accuracy_last']:.3f} on the non-members "
                f"(gap {normal['accuracy_last'] - test['accuracy_last']:+.3f}).")
        lines.append(f"- The MI AUC is {auc_plain} without and {auc_private} with DP-SGD.")
        return "\n".join(lines)

    num_poisons = sum(run.num_poisons for run in private)
    plain_poison, private_poison = _curve_summary(plain, POISON), _curve_summary(private,
                                                                                 POISON)
    private_normal = _curve_summary(private, NORMAL)
    relation = chance_relation(private_poison["accuracy_last"], chance=chance,
                               num_samples=num_poisons)
    lines += [
        f"- Without DP-SGD, the accuracy on the poisoning samples (against the labels the "
        f"head trains on) "
        f"reaches {plain_poison['accuracy_last']:.3f} in the last epoch: the head "
        f"{'fits' if plain_poison['accuracy_last'] > 0.5 else 'does not fit'} most of them.",
        f"- With DP-SGD it goes from {private_poison['accuracy_first']:.3f} after the first "
        f"epoch to {private_poison['accuracy_last']:.3f} after the last, {relation} chance "
        f"({chance:.3f}; 'near' means within two binomial standard errors over "
        f"{num_poisons} poisoning samples). Their loss {_direction(private_poison['loss_first'], private_poison['loss_last'])} "
        f"from {private_poison['loss_first']:.3f} to {private_poison['loss_last']:.3f} nats, "
        f"while the accuracy on the normal samples reaches "
        f"{private_normal['accuracy_last']:.3f}.",
        f"- The MI AUC is {auc_plain} without and {auc_private} with DP-SGD.",
    ]
    if attack == "dirty_label":
        loss_rose = private_poison["loss_last"] > private_poison["loss_first"]
        lines.append(
            "- The paper's appendix reports that under DP-SGD the accuracy on dirty-label "
            "poisoning samples stays at the random-guess level and their loss rises. In this "
            f"run the accuracy ends {relation} chance and the loss "
            f"{_direction(private_poison['loss_first'], private_poison['loss_last'])}, so the "
            f"run {'agrees' if relation == 'near' else 'differs'} on the accuracy level and "
            f"{'agrees' if loss_rose else 'differs'} on the loss.")
    elif attack == "clean_label":
        rises = private_poison["accuracy_last"] > private_poison["accuracy_first"]
        stays_low = private_poison["accuracy_last"] < plain_poison["accuracy_last"]
        lines.append(
            "- The paper's appendix reports that under DP-SGD the accuracy on clean-label "
            "poisoning samples stays low but improves slightly during training. This run "
            f"{'agrees' if rises and stays_low else 'differs'}: the accuracy "
            f"{_direction(private_poison['accuracy_first'], private_poison['accuracy_last'])} "
            f"and ends {'below' if stays_low else 'at or above'} the non-private "
            f"{plain_poison['accuracy_last']:.3f}.")
    return "\n".join(lines)


def describe_sweep(results: Sequence[RunResult]) -> str:
    """Write a Markdown paragraph of how MI AUC and test accuracy change with epsilon."""
    frame = results_frame(results)
    reference = frame[~frame.private]
    private = (frame[frame.private].groupby("noise_multiplier")[["epsilon", "mi_auc",
                                                                 "test_accuracy"]]
               .mean().sort_index())
    if private.empty or reference.empty:
        raise ValueError("the sweep needs private runs and the non-private reference")
    lines = ["**Noise sweep, measured in this run** (mean over target classes):",
             f"- Without DP-SGD: MI AUC {reference.mi_auc.mean():.3f}, test accuracy "
             f"{reference.test_accuracy.mean():.3f}."]
    for sigma, row in private.iterrows():
        lines.append(f"- σ = {sigma:g} (ε = {row.epsilon:.2f}): MI AUC {row.mi_auc:.3f}, "
                     f"test accuracy {row.test_accuracy:.3f}.")
    reference_auc = reference.mi_auc.mean()
    below = bool(np.all(private.mi_auc.to_numpy() < reference_auc))
    smallest, largest = private.iloc[0], private.iloc[-1]
    lines.append(
        f"- With DP-SGD the MI AUC lies between {private.mi_auc.min():.3f} and "
        f"{private.mi_auc.max():.3f}, {'below' if below else 'not always below'} the "
        f"non-private {reference_auc:.3f}. The test accuracy goes from "
        f"{smallest.test_accuracy:.3f} at σ = {smallest.name:g} to "
        f"{largest.test_accuracy:.3f} at σ = {largest.name:g}.")
    return "\n".join(lines)
