"""The transfer-learning head and a trainer for many heads at once.

The head is Linear(d, 128) -> tanh -> Linear(128, C), trained on frozen features with
Adam and softmax cross-entropy. `train_heads` trains M heads as one tensor program:
weights are stacked along a model axis, model m trains only on the samples of its row of
``train_masks``, and each model follows exactly the schedule it would follow alone
(its own initialisation, its own shuffled mini-batches, its own Adam state and step
count). On a GPU one batched program replaces M small ones. On two CPU cores
``make bench`` measured only 1.05x to 1.6x for 16 heads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .features import best_device

log = logging.getLogger(__name__)

HIDDEN_UNITS = 128


class Head(nn.Module):
    """Linear(d, hidden) -> tanh -> Linear(hidden, C); returns logits."""

    def __init__(self, feature_dim: int, num_classes: int, *, hidden: int = HIDDEN_UNITS):
        super().__init__()
        self.hidden = nn.Linear(feature_dim, hidden)
        self.output = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.output(torch.tanh(self.hidden(features)))


@dataclass
class HeadEnsemble:
    """M trained heads with stacked weights.

    Attributes:
        hidden_weight: (M, d, hidden).
        hidden_bias: (M, hidden).
        output_weight: (M, hidden, C).
        output_bias: (M, C).
    """

    hidden_weight: torch.Tensor
    hidden_bias: torch.Tensor
    output_weight: torch.Tensor
    output_bias: torch.Tensor

    @property
    def num_models(self) -> int:
        return self.hidden_weight.shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return [self.hidden_weight, self.hidden_bias, self.output_weight, self.output_bias]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map features (M, B, d) to logits (M, B, C)."""
        hidden = torch.tanh(torch.baddbmm(self.hidden_bias[:, None], features, self.hidden_weight))
        return torch.baddbmm(self.output_bias[:, None], hidden, self.output_weight)

    @torch.no_grad()
    def logits(self, features: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
        """Evaluate every model on the same features (N, d); return logits (M, N, C)."""
        device = self.hidden_weight.device
        outputs = []
        for start in range(0, len(features), batch_size):
            batch = torch.as_tensor(features[start:start + batch_size], device=device).float()
            outputs.append(self.forward(batch.expand(self.num_models, -1, -1)).cpu())
        return torch.cat(outputs, dim=1).numpy()

    def to_module(self, model: int = 0) -> Head:
        """Copy model `model` into a `Head` module (on the CPU)."""
        feature_dim, hidden = self.hidden_weight.shape[1:]
        head = Head(feature_dim, self.output_weight.shape[2], hidden=hidden)
        with torch.no_grad():
            head.hidden.weight.copy_(self.hidden_weight[model].T)
            head.hidden.bias.copy_(self.hidden_bias[model])
            head.output.weight.copy_(self.output_weight[model].T)
            head.output.bias.copy_(self.output_bias[model])
        return head


def init_head_parameters(feature_dim: int, num_classes: int, generator: torch.Generator, *,
                         hidden: int = HIDDEN_UNITS) -> list[torch.Tensor]:
    """Draw one head's parameters as `torch.nn.Linear` does by default.

    Weights and biases are uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)], drawn in the order
    hidden weight, hidden bias, output weight, output bias. Weights are stored (in, out).
    """
    parameters = []
    for fan_in, fan_out in ((feature_dim, hidden), (hidden, num_classes)):
        bound = 1.0 / math.sqrt(fan_in)
        weight = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=generator)
        bias = torch.empty(fan_out).uniform_(-bound, bound, generator=generator)
        parameters += [weight.T.contiguous(), bias]
    return parameters


class _MaskedAdam:
    """Adam (Kingma and Ba, 2015) on stacked parameters, stepping only active models.

    Identical to `torch.optim.Adam` with default betas and eps for each model on its own:
    a model without a batch at this step keeps its moments and step count unchanged.
    """

    def __init__(self, parameters: Sequence[torch.Tensor], *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.parameters = list(parameters)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.first_moments = [torch.zeros_like(p) for p in self.parameters]
        self.second_moments = [torch.zeros_like(p) for p in self.parameters]
        self.steps = torch.zeros(self.parameters[0].shape[0], device=self.parameters[0].device)

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        self.steps += active.float()
        beta1, beta2 = self.betas
        correction1 = 1 - beta1 ** self.steps.clamp(min=1)
        correction2 = 1 - beta2 ** self.steps.clamp(min=1)
        for parameter, m, v in zip(self.parameters, self.first_moments, self.second_moments):
            shape = (-1,) + (1,) * (parameter.ndim - 1)
            mask = active.view(shape)
            grad = parameter.grad
            m.copy_(torch.where(mask, beta1 * m + (1 - beta1) * grad, m))
            v.copy_(torch.where(mask, beta2 * v + (1 - beta2) * grad * grad, v))
            update = (m / correction1.view(shape)) / ((v / correction2.view(shape)).sqrt() + self.eps)
            parameter.sub_(torch.where(mask, self.lr * update, torch.zeros_like(update)))


def train_heads(features: np.ndarray, labels: np.ndarray, *, num_classes: int,
                train_masks: np.ndarray, seeds: Sequence[int], epochs: int = 20,
                batch_size: int = 100, lr: float = 1e-3, device: torch.device | None = None,
                progress: bool = True) -> HeadEnsemble:
    """Train one head per row of `train_masks`, all at once.

    Model m is initialised by `init_head_parameters` from a ``torch.Generator`` seeded with
    ``seeds[m]``. The same generator then draws one permutation of the model's training
    samples per epoch, which is cut into mini-batches of `batch_size` (the last one smaller).

    Args:
        features: float array (N, d) of every sample any model trains on.
        labels: int array (N,) of training labels (poison labels included).
        num_classes: C.
        train_masks: bool array (M, N); row m selects model m's training set.
        seeds: M integer seeds.
        epochs: passes over each model's training set.
        batch_size: samples per mini-batch.
        lr: Adam learning rate.
        device: where to train; `best_device()` when None.
        progress: show a progress bar over epochs.

    Returns:
        The trained `HeadEnsemble`.
    """
    train_masks = np.asarray(train_masks, dtype=bool)
    if train_masks.ndim != 2 or train_masks.shape[1] != len(features):
        raise ValueError(f"train_masks must have shape (M, {len(features)}), "
                         f"got {train_masks.shape}")
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    if len(seeds) != len(train_masks):
        raise ValueError(f"{len(train_masks)} masks but {len(seeds)} seeds")
    if not train_masks.any(axis=1).all():
        raise ValueError("every model needs at least one training sample; an empty mask row "
                         f"was found at {np.flatnonzero(~train_masks.any(axis=1))[:5]}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"[{labels.min()}, {labels.max()}]")
    device = device or best_device()
    num_models = len(train_masks)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    initial = [init_head_parameters(features.shape[1], num_classes, g) for g in generators]
    ensemble = HeadEnsemble(*[torch.stack([model[i] for model in initial]).to(device)
                              .requires_grad_(True) for i in range(4)])
    optimizer = _MaskedAdam(ensemble.parameters(), lr=lr)

    feature_tensor = torch.as_tensor(features, dtype=torch.float32, device=device)
    label_tensor = torch.as_tensor(labels, dtype=torch.int64, device=device)
    members = [torch.as_tensor(np.flatnonzero(mask)) for mask in train_masks]
    sizes = torch.tensor([len(m) for m in members])
    num_steps = int(math.ceil(sizes.max().item() / batch_size))

    for _ in tqdm(range(epochs), desc=f"training {num_models} heads", disable=not progress,
                  unit="epoch"):
        # Padded (M, num_steps * batch_size) schedule of sample indices and validity.
        schedule = torch.zeros(num_models, num_steps * batch_size, dtype=torch.int64)
        valid = torch.zeros(num_models, num_steps * batch_size, dtype=torch.bool)
        for m, (indices, generator) in enumerate(zip(members, generators)):
            order = indices[torch.randperm(len(indices), generator=generator)]
            schedule[m, :len(order)] = order
            valid[m, :len(order)] = True
        schedule, valid = schedule.to(device), valid.to(device)

        for step in range(num_steps):
            batch = slice(step * batch_size, (step + 1) * batch_size)
            indices, batch_valid = schedule[:, batch], valid[:, batch]
            logits = ensemble.forward(feature_tensor[indices])
            losses = F.cross_entropy(logits.transpose(1, 2), label_tensor[indices],
                                     reduction="none")
            counts = batch_valid.sum(dim=1)
            per_model_loss = (losses * batch_valid).sum(dim=1) / counts.clamp(min=1)
            for parameter in ensemble.parameters():
                parameter.grad = None
            per_model_loss.sum().backward()
            optimizer.step(counts > 0)

    for parameter in ensemble.parameters():
        parameter.requires_grad_(False)
    return ensemble


def train_head(features: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int,
               epochs: int = 20, batch_size: int = 100, lr: float = 1e-3,
               device: torch.device | None = None, progress: bool = True) -> HeadEnsemble:
    """Train a single head on all of `features`; a one-model `train_heads`."""
    masks = np.ones((1, len(features)), dtype=bool)
    return train_heads(features, labels, num_classes=num_classes, train_masks=masks,
                       seeds=[seed], epochs=epochs, batch_size=batch_size, lr=lr,
                       device=device, progress=progress)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Top-1 accuracy of logits (..., N, C) against labels (N,); one value per model."""
    return (logits.argmax(axis=-1) == labels).mean(axis=-1)
