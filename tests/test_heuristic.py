"""Tests for mexp_lib.heuristic: the heuristic h, empirical CDFs and summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mexp_lib import heuristic


def _brute_force_h(vectors: np.ndarray, labels: np.ndarray, query_indices: np.ndarray):
    """d_in, d_out and h by a double loop over the queries and the training set."""
    d_in = np.full(len(query_indices), np.inf)
    d_out = np.full(len(query_indices), np.inf)
    for q, i in enumerate(query_indices):
        for j in range(len(vectors)):
            if j == i:
                continue
            distance = math.sqrt(sum((a - b) ** 2 for a, b in zip(vectors[i], vectors[j])))
            if labels[j] == labels[i]:
                d_in[q] = min(d_in[q], distance)
            else:
                d_out[q] = min(d_out[q], distance)
    h = (d_out - d_in) / np.minimum(d_out, d_in)
    return h, d_in, d_out


@pytest.fixture(name="random_set")
def fixture_random_set():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 5))
    labels = rng.integers(0, 3, size=60)
    return vectors, labels


def test_h_matches_brute_force_with_chunking(random_set):
    vectors, labels = random_set
    query_indices = np.arange(60)
    expected_h, expected_d_in, expected_d_out = _brute_force_h(vectors, labels, query_indices)

    values = heuristic.heuristic_h(
        vectors, labels, query_indices=query_indices, chunk_size=7, device="cpu"
    )

    np.testing.assert_allclose(values.d_in, expected_d_in, rtol=1e-12)
    np.testing.assert_allclose(values.d_out, expected_d_out, rtol=1e-12)
    np.testing.assert_allclose(values.h, expected_h, rtol=1e-10)
    np.testing.assert_array_equal(values.query_indices, query_indices)


def test_h_nearest_indices_labels(random_set):
    vectors, labels = random_set
    values = heuristic.heuristic_h(vectors, labels, query_indices=np.arange(60), chunk_size=7)

    assert np.all(labels[values.nearest_in_index] == labels)
    assert np.all(labels[values.nearest_out_index] != labels)
    assert np.all(values.nearest_in_index != np.arange(60))
    np.testing.assert_allclose(
        values.d_in, np.linalg.norm(vectors - vectors[values.nearest_in_index], axis=1)
    )


def test_h_query_subset_keeps_query_order(random_set):
    vectors, labels = random_set
    query_indices = np.array([59, 3, 3, 17, 0, 42])
    expected_h, _, _ = _brute_force_h(vectors, labels, query_indices)

    values = heuristic.heuristic_h(vectors, labels, query_indices=query_indices, chunk_size=4)

    np.testing.assert_allclose(values.h, expected_h, rtol=1e-10)


def test_h_input_layouts_agree(random_set):
    vectors, labels = random_set
    images = vectors[:, :4].reshape(60, 2, 2, 1).astype(np.float32)
    flat = heuristic.heuristic_h(images.reshape(60, 4), labels, query_indices=np.arange(60))

    from_images = heuristic.heuristic_h(images, labels, query_indices=np.arange(60))
    from_tensor = heuristic.heuristic_h(
        torch.from_numpy(images), labels, query_indices=np.arange(60), chunk_size=9
    )

    np.testing.assert_array_equal(from_images.h, flat.h)
    np.testing.assert_allclose(from_tensor.h, flat.h, rtol=1e-12)


def test_h_accepts_string_labels(random_set):
    vectors, labels = random_set
    names = np.array(["cat", "dog", "ship"])[labels]

    by_name = heuristic.heuristic_h(vectors, names, query_indices=np.arange(60))
    by_code = heuristic.heuristic_h(vectors, labels, query_indices=np.arange(60))

    np.testing.assert_array_equal(by_name.h, by_code.h)


def test_h_hand_computed_example():
    # A=(0,0) and B=(3,0) have label 0, C=(0,2) and D=(6,2) have label 1.
    # A: d_in = |AB| = 3, d_out = |AC| = 2, h = (2 - 3) / 2 = -0.5.
    # B: d_in = 3, d_out = |BC| = |BD| = sqrt(13), h = (sqrt(13) - 3) / 3.
    # C: d_in = |CD| = 6, d_out = |CA| = 2, h = (2 - 6) / 2 = -2.
    vectors = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 2.0], [6.0, 2.0]])
    labels = np.array([0, 0, 1, 1])

    values = heuristic.heuristic_h(vectors, labels, query_indices=np.array([0, 1, 2]))

    np.testing.assert_allclose(values.d_in, [3.0, 3.0, 6.0])
    np.testing.assert_allclose(values.d_out, [2.0, math.sqrt(13.0), 2.0])
    np.testing.assert_allclose(values.h, [-0.5, (math.sqrt(13.0) - 3.0) / 3.0, -2.0])


def test_h_two_points_of_different_labels():
    # Each point is the only one of its class: d_in = inf, d_out = 5, h = -inf.
    values = heuristic.heuristic_h(
        np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([0, 1]), query_indices=np.array([0, 1])
    )

    np.testing.assert_array_equal(values.d_in, [np.inf, np.inf])
    np.testing.assert_allclose(values.d_out, [5.0, 5.0])
    np.testing.assert_array_equal(values.h, [-np.inf, -np.inf])
    np.testing.assert_array_equal(values.nearest_in_index, [-1, -1])


def test_h_single_sample_class_among_others():
    vectors = np.array([[0.0], [1.0], [2.5], [10.0]])
    labels = np.array([0, 0, 0, 7])

    values = heuristic.heuristic_h(vectors, labels, query_indices=np.array([3, 2]))

    assert values.d_in[0] == np.inf
    assert values.d_out[0] == pytest.approx(7.5)
    assert values.h[0] == -np.inf
    assert values.h[1] == pytest.approx((7.5 - 1.5) / 1.5)


def test_h_single_class_training_set():
    values = heuristic.heuristic_h(
        np.array([[0.0], [1.0], [3.0]]), np.zeros(3, dtype=int), query_indices=np.arange(3)
    )

    np.testing.assert_array_equal(values.d_out, [np.inf] * 3)
    np.testing.assert_array_equal(values.h, [np.inf] * 3)
    np.testing.assert_array_equal(values.nearest_out_index, [-1] * 3)


def test_h_duplicates():
    # Large coordinates make ||a||^2 + ||b||^2 - 2 a.b round away from 0, so exact
    # zeros require the direct recomputation of the nearest distances.
    rng = np.random.default_rng(1)
    base = rng.uniform(1000.0, 2000.0, size=(4, 50))
    vectors = np.stack([base[0], base[0], base[1], base[1], base[2], base[2], base[2], base[3]])
    labels = np.array([0, 0, 1, 0, 2, 2, 1, 1])

    values = heuristic.heuristic_h(vectors, labels, query_indices=np.arange(8), chunk_size=3)

    # Samples 0 and 1 duplicate each other with the same label.
    np.testing.assert_array_equal(values.d_in[:2], [0.0, 0.0])
    np.testing.assert_array_equal(values.h[:2], [np.inf, np.inf])
    # Samples 2 and 3 duplicate each other with different labels.
    np.testing.assert_array_equal(values.d_out[2:4], [0.0, 0.0])
    np.testing.assert_array_equal(values.h[2:4], [-np.inf, -np.inf])
    # Sample 4 duplicates 5 (same label) and 6 (other label), so h = 0 / 0.
    assert values.d_in[4] == 0.0
    assert values.d_out[4] == 0.0
    assert math.isnan(values.h[4])


def test_h_from_distances_limits():
    d_in = np.array([0.0, 2.0, 0.0, np.inf, 1.0, np.inf, np.inf, 0.0])
    d_out = np.array([2.0, 0.0, 0.0, 2.0, np.inf, np.inf, 0.0, np.inf])

    h = heuristic.h_from_distances(d_in, d_out)

    np.testing.assert_array_equal(
        h, [np.inf, -np.inf, np.nan, -np.inf, np.inf, np.nan, -np.inf, np.inf]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_indices": np.array([0, 60])}, r"query_indices must lie in \[0, 60\)"),
        ({"query_indices": np.array([0.0, 1.0])}, "integer training-set indices"),
        ({"query_indices": np.arange(3), "chunk_size": 0}, "chunk_size must be >= 1"),
    ],
)
def test_h_input_validation(random_set, kwargs, message):
    vectors, labels = random_set
    with pytest.raises(ValueError, match=message):
        heuristic.heuristic_h(vectors, labels, **kwargs)


def test_h_rejects_mismatched_labels(random_set):
    vectors, labels = random_set
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(60,\)"):
        heuristic.heuristic_h(vectors, labels[:-1], query_indices=np.arange(3))


# --------------------------------------------------------------------------- CDFs


def test_empirical_cdf_steps():
    x, fraction = heuristic.empirical_cdf(np.array([3.0, -np.inf, 1.0, 1.0]))

    np.testing.assert_array_equal(x, [-np.inf, 1.0, 1.0, 3.0])
    np.testing.assert_allclose(fraction, [0.25, 0.5, 0.75, 1.0])


def test_average_cdf_two_known_arrays():
    # F_a on the grid is [0, 1/4, 1/2, 1/2, 1], F_b is [0, 0, 1, 1, 1].
    grid = np.array([0.0, 1.0, 2.0, 2.5, 5.0])

    average = heuristic.average_cdf([np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0])], grid)

    np.testing.assert_allclose(average, [0.0, 0.125, 0.75, 0.75, 1.0])


def test_cdf_rejects_nan_and_empty():
    with pytest.raises(ValueError, match="contains 1 NaN"):
        heuristic.empirical_cdf(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"samples\[1\] is empty"):
        heuristic.average_cdf([np.array([1.0]), np.array([])], np.array([0.0]))
    with pytest.raises(ValueError, match="samples is empty"):
        heuristic.average_cdf([], np.array([0.0]))


def test_h_summary_counts_and_quantiles():
    h = np.concatenate([np.arange(1.0, 11.0) - 3.0, [np.nan, -np.inf, np.inf]])

    summary = heuristic.h_summary(h)

    assert summary["count"] == 13
    assert summary["n_nan"] == 1
    assert summary["n_neg_inf"] == 1
    assert summary["n_pos_inf"] == 1
    # The 12 defined values sorted: -inf, -2, -1, 0, 1, ..., 7, inf.
    assert summary["fraction_negative"] == pytest.approx(3 / 12)
    assert summary["median"] == 2.0
    assert summary["p10"] == -2.0
    assert summary["p90"] == 7.0


def test_h_summary_all_nan():
    summary = heuristic.h_summary(np.array([np.nan, np.nan]))

    assert summary["n_nan"] == 2
    assert math.isnan(summary["median"])
