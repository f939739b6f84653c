"""Tests for mexp_lib.finetune: fine-tuning g with its head, and notebook B's h curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mexp_lib import finetune, h_studies, heuristic
from mexp_lib.extractors import build_extractor
from mexp_lib.features import extract_features


@pytest.fixture(name="tiny_task")
def fixture_tiny_task():
    """Twelve random 32x32 RGB images of three classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 4)
    return images, labels


@pytest.fixture(name="untrained_lite0", scope="module")
def fixture_untrained_lite0():
    return build_extractor("efficientnet_lite0", input_size=32, pretrained=False)


def _fine_tune(extractor, images, labels, config):
    features = extract_features(extractor, images, progress=False)
    head = finetune.initial_head(features, labels, num_classes=3, config=config)
    return head, finetune.fine_tune(extractor, head, images, labels, config=config,
                                    device=torch.device("cpu"), progress=False)


def test_fine_tune_changes_weights(untrained_lite0, tiny_task):
    images, labels = tiny_task
    before = {name: p.clone() for name, p in untrained_lite0.named_parameters()}
    config = finetune.FineTuningConfig(lr=1e-3, epochs=2, batch_size=6, update_batch_norm=True)

    head, result = _fine_tune(untrained_lite0, images, labels, config)

    tuned = dict(result.classifier.extractor.named_parameters())
    changed = [name for name, p in before.items() if not torch.equal(p, tuned[name])]
    assert len(changed) > len(before) // 2
    assert finetune.weight_change(untrained_lite0, result.classifier.extractor) > 0
    assert finetune.batch_norm_statistics_change(untrained_lite0,
                                                 result.classifier.extractor) > 0
    assert not torch.equal(head.hidden.weight, result.classifier.head.hidden.weight)
    # The extractor passed in stays as it was.
    for name, parameter in untrained_lite0.named_parameters():
        assert torch.equal(parameter, before[name]), name
    assert result.epoch_losses.shape == (2,)
    assert np.all(np.isfinite(result.epoch_losses))


def test_fine_tune_keeps_batch_norm_statistics(untrained_lite0, tiny_task):
    images, labels = tiny_task
    config = finetune.FineTuningConfig(lr=1e-3, epochs=1, batch_size=6)

    _, result = _fine_tune(untrained_lite0, images, labels, config)

    assert finetune.batch_norm_statistics_change(untrained_lite0,
                                                 result.classifier.extractor) == 0.0
    assert finetune.weight_change(untrained_lite0, result.classifier.extractor) > 0


def test_fine_tune_inception_in_train_mode():
    # torchvision's Inception3 has an auxiliary head that would run in train mode and fail
    # at 96 px; the registry builds g without it.
    extractor = build_extractor("inceptionv3", input_size=96, pretrained=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1])
    config = finetune.FineTuningConfig(lr=1e-3, epochs=1, batch_size=4)
    head = finetune.initial_head(np.zeros((4, extractor.feature_dim), np.float32), labels,
                                 num_classes=2, config=config)

    result = finetune.fine_tune(extractor, head, images, labels, config=config,
                                device=torch.device("cpu"), progress=False)

    assert np.isfinite(result.epoch_losses).all()
    assert finetune.weight_change(extractor.backbone, result.classifier.extractor.backbone) > 0
    assert extractor.backbone.AuxLogits is None


def test_fine_tuned_features_shape_and_change(untrained_lite0, tiny_task):
    images, labels = tiny_task
    config = finetune.FineTuningConfig(lr=1e-3, epochs=1, batch_size=4)

    _, result = _fine_tune(untrained_lite0, images, labels, config)
    frozen = extract_features(untrained_lite0, images, progress=False)
    tuned = extract_features(result.classifier.extractor, images, progress=False)

    assert tuned.shape == (12, untrained_lite0.feature_dim)
    assert frozen.shape == tuned.shape
    assert not np.allclose(frozen, tuned)
    logits = finetune.head_logits(result.classifier.head, tuned)
    assert logits.shape == (12, 3)
    assert not result.classifier.training
    assert not any(p.requires_grad for p in result.classifier.parameters())


def test_fine_tune_is_deterministic(untrained_lite0, tiny_task):
    images, labels = tiny_task
    config = finetune.FineTuningConfig(lr=1e-3, epochs=1, batch_size=5, seed=3)

    _, first = _fine_tune(untrained_lite0, images, labels, config)
    _, second = _fine_tune(untrained_lite0, images, labels, config)

    np.testing.assert_allclose(first.epoch_losses, second.epoch_losses, rtol=1e-5)


def test_initial_head_warmup_fits_better(untrained_lite0, tiny_task):
    images, labels = tiny_task
    features = extract_features(untrained_lite0, images, progress=False)
    random_config = finetune.FineTuningConfig()
    warm_config = finetune.FineTuningConfig(batch_size=12, head_warmup_epochs=30, head_lr=1e-2)

    cold = finetune.initial_head(features, labels, num_classes=3, config=random_config)
    warm = finetune.initial_head(features, labels, num_classes=3, config=warm_config)

    targets = torch.as_tensor(labels)
    cold_loss = torch.nn.functional.cross_entropy(
        torch.as_tensor(finetune.head_logits(cold, features)), targets)
    warm_loss = torch.nn.functional.cross_entropy(
        torch.as_tensor(finetune.head_logits(warm, features)), targets)
    assert warm_loss < cold_loss


def test_relative_change_known_values():
    before = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
    after = {"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([4.0])}

    assert finetune.relative_change(before, after) == pytest.approx(1 / 5)
    assert finetune.relative_change(before, before) == 0.0
    with pytest.raises(ValueError, match="same tensors"):
        finetune.relative_change(before, {"a": after["a"]})


def test_fine_tuning_config_validation():
    with pytest.raises(ValueError, match="learning rates must be positive"):
        finetune.FineTuningConfig(lr=0.0)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        finetune.FineTuningConfig(batch_size=1)


def test_h_of_members_matches_heuristic():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(30, 4))
    labels = np.repeat(np.arange(3), 10)
    is_member = np.arange(30) < 24  # the last six rows play poisons

    h = h_studies.h_of_members(vectors, labels, is_member=is_member, target_classes=[0, 2])

    expected = heuristic.heuristic_h(vectors, labels, query_indices=np.arange(30)).h
    np.testing.assert_allclose(h[0], expected[:10])
    np.testing.assert_allclose(h[2], expected[20:24])
    assert set(h) == {0, 2}


def test_h_of_members_rejects_absent_class():
    vectors = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"target classes \[5\] have no member"):
        h_studies.h_of_members(vectors, np.array([0, 0, 1, 1]), is_member=np.ones(4, bool),
                              target_classes=[5])


def test_averaged_cdf_and_quantile():
    h_by_class = {0: np.array([1.0, 2.0, 3.0, 4.0]), 1: np.array([2.0, np.nan, 2.0])}

    grid, fraction = h_studies.averaged_cdf(h_by_class)

    np.testing.assert_array_equal(grid, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(fraction, [0.125, 0.75, 0.875, 1.0])
    assert h_studies.averaged_quantile(h_by_class, 0.5) == 2.0
    assert h_studies.averaged_quantile(h_by_class, 0.8) == 3.0
    assert h_studies.averaged_quantile(h_by_class, 0.1) == 1.0


def test_averaged_quantile_single_class_matches_summary():
    h = np.random.default_rng(2).normal(size=37)
    summary = heuristic.h_summary(h)

    assert h_studies.averaged_quantile({0: h}, 0.5) == summary["median"]
    assert h_studies.averaged_quantile({0: h}, 0.1) == summary["p10"]


def test_h_table_rows():
    curves = {"a": {0: np.array([-1.0, 1.0, 2.0, np.nan])}, "b": {1: np.array([3.0, 5.0])}}

    table = h_studies.h_table(curves, class_names=["zero", "one"])

    assert list(table.index) == ["a", "b"]
    assert table.loc["a", "members"] == 4
    assert table.loc["a", "undefined"] == 1
    assert table.loc["a", "fraction h < 0"] == pytest.approx(1 / 3)
    assert table.loc["a", "median h"] == 1.0
    assert table.loc["b", "target classes"] == "one"
    assert table.loc["b", "p10 h"] == 3.0


def test_balanced_subset():
    labels = np.array([0, 1, 0, 1, 0, 1, 2, 2, 2])

    chosen = h_studies.balanced_subset(labels, per_class=2, seed=0)

    assert np.bincount(labels[chosen]).tolist() == [2, 2, 2]
    assert np.all(np.diff(chosen) > 0)
    np.testing.assert_array_equal(h_studies.balanced_subset(labels, per_class=None, seed=0),
                                  np.arange(9))
    with pytest.raises(ValueError, match="class 0 has 3"):
        h_studies.balanced_subset(labels, per_class=4, seed=0)


def test_input_vectors_shape_and_range():
    images = np.full((2, 8, 8, 1), 255, dtype=np.uint8)

    vectors = h_studies.input_vectors(images, input_size=32)

    assert vectors.shape == (2, 3 * 32 * 32)
    assert float(vectors.max()) == pytest.approx(1.0)
    assert h_studies.input_vectors(images[:0], input_size=32).shape == (0, 3 * 32 * 32)
