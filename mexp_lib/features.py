"""Batched feature extraction with an on-disk cache.

Features of a frozen extractor depend only on the images and on g, so they are computed
once and stored. The key covers the image content (a SHA-256 of the uint8 bytes), the
images' origin (dataset and split, for readable file names) and the extractor with its
weights and input size (`FeatureExtractor.cache_tag`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .extractors import FeatureExtractor, to_unit_tensor
from .store import CorruptArtifactError, cached_arrays

log = logging.getLogger(__name__)


def best_device() -> torch.device:
    """Return CUDA when available, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: np.ndarray, *, batch_size: int = 128,
                     device: torch.device | None = None, progress: bool = True) -> np.ndarray:
    """Compute g(x) for uint8 NHWC images.

    Args:
        extractor: the feature extractor (its train/eval mode is kept).
        images: uint8 array (N, H, W, C).
        batch_size: images per forward pass.
        device: where to run; `best_device()` when None.
        progress: show a progress bar.

    Returns:
        float32 array (N, extractor.feature_dim).
    """
    device = device or best_device()
    extractor = extractor.to(device)
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=f"features {extractor.name}", disable=not progress,
                      unit="batch"):
        batch = to_unit_tensor(images[start:start + batch_size]).to(device)
        chunks.append(extractor(batch).float().cpu().numpy())
    if not chunks:
        return np.zeros((0, extractor.feature_dim), dtype=np.float32)
    return np.concatenate(chunks)


def images_digest(images: np.ndarray) -> str:
    """SHA-256 of the images' shape and bytes, shortened to 16 hex digits."""
    digest = hashlib.sha256(repr(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()[:16]


def cached_features(extractor: FeatureExtractor, images: np.ndarray, *,
                    cache_dir: str | Path, tag: str, batch_size: int = 128,
                    device: torch.device | None = None, progress: bool = True) -> np.ndarray:
    """Return g(images), from ``cache_dir`` when computed before.

    Args:
        extractor: the feature extractor; must be frozen (features are cached per weights
            identity, not per weight values, so a fine-tuned g needs `extract_features`).
        images: uint8 NHWC images.
        cache_dir: folder of the cache files.
        tag: where the images come from, e.g. ``"mnist5k/members"``; part of the file name.
        batch_size, device, progress: as in `extract_features`.

    Returns:
        float32 array (N, extractor.feature_dim).

    Raises:
        CorruptArtifactError: a cache file exists but is unreadable (the message names it).
    """
    if any(parameter.requires_grad for parameter in extractor.parameters()):
        raise ValueError(
            f"extractor {extractor.name} has trainable weights; cache only frozen extractors "
            "or call extract_features for a fine-tuned one"
        )
    safe_tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag)
    path = Path(cache_dir) / extractor.cache_tag / f"{safe_tag}-{images_digest(images)}.npz"
    arrays = cached_arrays(path, lambda: {"features": extract_features(
        extractor, images, batch_size=batch_size, device=device, progress=progress)})
    if "features" not in arrays:
        raise CorruptArtifactError(f"cache file {path} contains no 'features' array; delete the "
                                   "file and run again to recompute it")
    features = arrays["features"]
    if features.shape != (len(images), extractor.feature_dim):
        raise ValueError(
            f"cached features {path} have shape {features.shape}, expected "
            f"{(len(images), extractor.feature_dim)}; delete the file to recompute it"
        )
    return features
