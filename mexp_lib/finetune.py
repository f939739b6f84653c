"""Fine-tuning of the whole network: extractor g and head trained together.

The "impact of fine-tuning" variant of Chen et al. (NeurIPS 2022) trains every weight with
Adam at lr 1e-5 instead of the head alone. `fine_tune` returns the trained classifier. The
helpers below measure how far its weights and batch-norm statistics moved.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .extractors import FeatureExtractor, to_unit_tensor
from .features import best_device
from .heads import Head, train_head

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Fine-tuning the whole network.


@dataclass(frozen=True)
class FineTuningConfig:
    """Training settings of a classifier whose extractor is trained with its head.

    Attributes:
        lr: Adam learning rate of every weight, extractor and head (1e-5 in Chen et al., NeurIPS 2022).
        epochs: passes over the training set.
        batch_size: images per mini-batch.
        head_warmup_epochs: epochs of training the head alone on frozen features (the
            transfer-learning recipe, Adam at `head_lr`) before the whole network is
            fine-tuned. 0 starts fine-tuning from a randomly initialised head.
        head_lr: Adam learning rate of the head warm-up.
        update_batch_norm: run batch normalisation in train mode, so that it normalises
            with batch statistics and re-estimates its running statistics on the
            training images. False keeps it in inference mode with the pretrained
            statistics, as Keras recommends for fine-tuning.
        seed: seed of the head's initialisation and of the mini-batch order.
    """

    lr: float = 1e-5
    epochs: int = 20
    batch_size: int = 100
    head_warmup_epochs: int = 0
    head_lr: float = 1e-3
    update_batch_norm: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.head_lr <= 0:
            raise ValueError(f"learning rates must be positive: {self}")
        if self.epochs < 1 or self.batch_size < 2 or self.head_warmup_epochs < 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 2, head_warmup_epochs >= 0: "
                             f"{self}")


class Classifier(nn.Module):
    """g followed by the head: images in [0, 1] (N, C, H, W) to logits (N, classes)."""

    def __init__(self, extractor: FeatureExtractor, head: Head) -> None:
        super().__init__()
        self.extractor = extractor
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(images))


@dataclass
class FineTuningResult:
    """A fine-tuned classifier and its training record.

    Attributes:
        classifier: the fine-tuned extractor and head, in eval mode, frozen, on the CPU.
        epoch_losses: mean training cross-entropy of each epoch, in nats.
        seconds: wall time of fine-tuning.
    """

    classifier: Classifier
    epoch_losses: np.ndarray
    seconds: float


def initial_head(features: np.ndarray, labels: np.ndarray, *, num_classes: int,
                 config: FineTuningConfig, device: torch.device | None = None) -> Head:
    """Build the head fine-tuning starts from.

    With ``config.head_warmup_epochs`` > 0 the head is trained on the frozen `features`
    (Adam at ``config.head_lr``); otherwise it is randomly initialised, seeded with
    ``config.seed``.
    """
    if config.head_warmup_epochs == 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return Head(features.shape[1], num_classes)
    ensemble = train_head(features, labels, num_classes=num_classes, seed=config.seed,
                          epochs=config.head_warmup_epochs, batch_size=config.batch_size,
                          lr=config.head_lr, device=device, progress=False)
    return ensemble.to_module()


def fine_tune(extractor: FeatureExtractor, head: Head, images: np.ndarray, labels: np.ndarray,
              *, config: FineTuningConfig, device: torch.device | None = None,
              progress: bool = True) -> FineTuningResult:
    """Train copies of `extractor` and `head` together on (images, labels).

    Batch normalisation runs in train mode only with ``config.update_batch_norm``; see
    `FineTuningConfig`. `extractor` and `head` themselves are left unchanged. A last
    mini-batch of one image is skipped, because batch normalisation in train mode cannot
    normalise a single 1x1 feature map.

    Args:
        extractor: the pretrained g to start from (frozen or not).
        head: the head to start from, see `initial_head`.
        images: uint8 NHWC training images, all of one size.
        labels: training labels, poison labels included.
        config: optimiser settings (``lr``, ``epochs``, ``batch_size``,
            ``update_batch_norm``, ``seed``).
        device: where to train; `best_device()` when None.
        progress: show a progress bar over epochs.

    Returns:
        The `FineTuningResult`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels) or len(images) < 2:
        raise ValueError(f"need at least 2 images with one label each, got {len(images)} "
                         f"images and {len(labels)} labels")
    device = device or best_device()
    started = time.perf_counter()
    trainable = copy.deepcopy(extractor).requires_grad_(True)
    classifier = Classifier(trainable, copy.deepcopy(head).requires_grad_(True)).to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    label_tensor = torch.as_tensor(labels)

    epoch_losses = []
    for _ in tqdm(range(config.epochs), desc=f"fine-tuning {extractor.name}",
                  disable=not progress, unit="epoch"):
        classifier.train()
        if not config.update_batch_norm:
            for module in classifier.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        order = torch.randperm(len(images), generator=generator)
        total_loss, seen = 0.0, 0
        for start in range(0, len(images), config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2:
                continue
            inputs = to_unit_tensor(images[batch.numpy()]).to(device)
            loss = F.cross_entropy(classifier(inputs), label_tensor[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            seen += len(batch)
        epoch_losses.append(total_loss / seen)
    classifier.eval().requires_grad_(False).cpu()
    return FineTuningResult(classifier, np.array(epoch_losses), time.perf_counter() - started)


def relative_change(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]
                    ) -> float:
    """Return ||after - before|| / ||before|| over all named tensors, as one vector."""
    if before.keys() != after.keys():
        raise ValueError("before and after must name the same tensors; compare two copies of "
                         "one network")
    difference, norm = 0.0, 0.0
    for name, old in before.items():
        old = old.detach().cpu().double()
        new = after[name].detach().cpu().double()
        if old.shape != new.shape:
            raise ValueError(f"{name} changed shape {tuple(old.shape)} -> {tuple(new.shape)}")
        difference += (new - old).pow(2).sum().item()
        norm += old.pow(2).sum().item()
    return float(np.sqrt(difference / norm))


def weight_change(before: nn.Module, after: nn.Module) -> float:
    """Relative change of all parameters (weights and biases) between two copies.

    Parameters that `after` no longer has (a removed auxiliary head) are left out.
    """
    after_parameters = dict(after.named_parameters())
    before_parameters = {name: parameter for name, parameter in before.named_parameters()
                         if name in after_parameters}
    return relative_change(before_parameters, after_parameters)


def batch_norm_statistics_change(before: nn.Module, after: nn.Module) -> float:
    """Relative change of the batch-norm running means and variances between two copies."""
    def statistics(module: nn.Module) -> dict[str, torch.Tensor]:
        return {name: buffer for name, buffer in module.named_buffers()
                if name.rsplit(".", 1)[-1] in ("running_mean", "running_var")}

    return relative_change(statistics(before), statistics(after))


@torch.no_grad()
def head_logits(head: Head, features: np.ndarray) -> np.ndarray:
    """Apply `head` (on the CPU) to features (N, d); return logits (N, C)."""
    return head.cpu()(torch.as_tensor(features, dtype=torch.float32)).numpy()
