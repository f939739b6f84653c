"""Tests for mexp_lib.features: batched extraction and the on-disk feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mexp_lib.extractors import build_extractor
from mexp_lib.features import cached_features, extract_features, images_digest
from mexp_lib.store import CorruptArtifactError, save_arrays

CPU = torch.device("cpu")


def _images(count: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 12, 12, channels), dtype=np.uint8)


def _cache_files(cache_dir) -> list:
    return sorted(cache_dir.rglob("*.npz"))


# --------------------------------------------------------------------------- extraction


def test_extract_features_matches_forward(lite0):
    images = _images(5)

    features = extract_features(lite0, images, batch_size=2, device=CPU, progress=False)
    with torch.no_grad():
        expected = lite0(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)

    assert features.dtype == np.float32
    assert features.shape == (5, 1280)
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_extract_features_batch_size_invariant(lite0):
    images = _images(5)

    in_one_batch = extract_features(lite0, images, batch_size=8, device=CPU, progress=False)
    in_three_batches = extract_features(lite0, images, batch_size=2, device=CPU,
                                        progress=False)

    np.testing.assert_allclose(in_one_batch, in_three_batches, rtol=1e-5, atol=1e-5)


def test_extract_features_zero_images(lite0):
    features = extract_features(lite0, np.zeros((0, 12, 12, 3), np.uint8), device=CPU,
                                progress=False)

    assert features.shape == (0, 1280)
    assert features.dtype == np.float32


def test_extract_features_grayscale(lite0):
    gray = _images(2, channels=1)

    from_gray = extract_features(lite0, gray, device=CPU, progress=False)
    from_rgb = extract_features(lite0, np.repeat(gray, 3, axis=-1), device=CPU, progress=False)

    np.testing.assert_allclose(from_gray, from_rgb, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- cache


def test_cached_features_second_call_cached(lite0, tmp_path, count_forward_calls):
    images = _images(8)
    calls = count_forward_calls(lite0)

    first = cached_features(lite0, images, cache_dir=tmp_path, tag="toy/members",
                            batch_size=4, device=CPU, progress=False)
    calls_after_first = calls[0]
    second = cached_features(lite0, images, cache_dir=tmp_path, tag="toy/members",
                             batch_size=4, device=CPU, progress=False)

    assert calls_after_first == 2
    assert calls[0] == calls_after_first
    np.testing.assert_array_equal(first, second)
    assert len(_cache_files(tmp_path)) == 1


def test_cached_features_equal_extracted(lite0, tmp_path):
    images = _images(4)

    cached = cached_features(lite0, images, cache_dir=tmp_path, tag="toy", device=CPU,
                             progress=False)
    extracted = extract_features(lite0, images, device=CPU, progress=False)

    np.testing.assert_allclose(cached, extracted, rtol=1e-5, atol=1e-5)


def test_cached_features_file_layout(lite0, tmp_path):
    images = _images(2)

    cached_features(lite0, images, cache_dir=tmp_path, tag="mnist5k/members", device=CPU,
                    progress=False)

    expected = tmp_path / lite0.cache_tag / f"mnist5k-members-{images_digest(images)}.npz"
    assert _cache_files(tmp_path) == [expected]


def test_cached_features_new_images_new_file(lite0, tmp_path):
    images = _images(3)
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1

    first = cached_features(lite0, images, cache_dir=tmp_path, tag="toy", device=CPU,
                            progress=False)
    second = cached_features(lite0, changed, cache_dir=tmp_path, tag="toy", device=CPU,
                             progress=False)

    assert len(_cache_files(tmp_path)) == 2
    np.testing.assert_array_equal(first[1:], second[1:])


def test_images_digest_covers_shape():
    images = _images(4)

    assert images_digest(images) == images_digest(images.copy())
    assert images_digest(images) != images_digest(images.reshape(2, 24, 12, 3))


def test_cached_features_corrupt_file_raises(lite0, tmp_path):
    images = _images(2)
    cached_features(lite0, images, cache_dir=tmp_path, tag="toy", device=CPU, progress=False)
    (path,) = _cache_files(tmp_path)
    path.write_bytes(b"not an npz archive")

    with pytest.raises(CorruptArtifactError, match=str(path)):
        cached_features(lite0, images, cache_dir=tmp_path, tag="toy", device=CPU,
                        progress=False)


def test_cached_features_wrong_shape_raises(lite0, tmp_path):
    images = _images(2)
    path = tmp_path / lite0.cache_tag / f"toy-{images_digest(images)}.npz"
    save_arrays(path, {"features": np.zeros((2, 7), np.float32)})

    with pytest.raises(ValueError, match="shape"):
        cached_features(lite0, images, cache_dir=tmp_path, tag="toy", device=CPU,
                        progress=False)


def test_cached_features_rejects_trainable(tmp_path):
    extractor = build_extractor("efficientnet_lite0", input_size=32)
    extractor.backbone.classifier.requires_grad_(True)
    extractor.backbone.conv_stem.requires_grad_(True)

    with pytest.raises(ValueError, match="trainable"):
        cached_features(extractor, _images(1), cache_dir=tmp_path, tag="toy", device=CPU,
                        progress=False)
    assert not _cache_files(tmp_path)


def test_cached_features_init_seed_separate(tmp_path):
    images = _images(2)
    first = build_extractor("efficientnet_lite0", input_size=32, pretrained=False, init_seed=1)
    second = build_extractor("efficientnet_lite0", input_size=32, pretrained=False, init_seed=2)

    cached_first = cached_features(first, images, cache_dir=tmp_path, tag="toy", device=CPU,
                                   progress=False)
    cached_second = cached_features(second, images, cache_dir=tmp_path, tag="toy",
                                    device=CPU, progress=False)

    assert not np.allclose(cached_first, cached_second)


def test_cache_without_features_key_raises(tmp_path, lite0):
    images = np.zeros((2, 8, 8, 1), np.uint8)
    cached_features(lite0, images, cache_dir=tmp_path, tag="toy", progress=False)
    path = next(tmp_path.rglob("*.npz"))
    save_arrays(path, {"other": np.zeros(3)})
    with pytest.raises(CorruptArtifactError, match="no 'features' array"):
        cached_features(lite0, images, cache_dir=tmp_path, tag="toy", progress=False)
