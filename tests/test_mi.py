"""Tests for mexp_lib.mi: Mentr, logit-scaled confidence, LiRA and ROC metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mexp_lib import mi


def _mentr_direct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mentr from the formula, one example at a time, on plain probabilities."""
    flat_logits = logits.reshape(-1, logits.shape[-2], logits.shape[-1])
    result = np.empty(flat_logits.shape[:2])
    for model, model_logits in enumerate(flat_logits):
        for n, z in enumerate(model_logits):
            p = np.exp(z) / np.exp(z).sum()
            y = labels[n]
            value = -(1 - p[y]) * math.log(p[y])
            for i in range(len(p)):
                if i != y:
                    value -= p[i] * math.log(1 - p[i])
            result[model, n] = value
    return result.reshape(logits.shape[:-1])


# --------------------------------------------------------------------------- scores


def test_softmax_sums_to_one_for_large_logits():
    probabilities = mi.softmax_probabilities(np.array([[1000.0, 0.0, -1000.0]]))

    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0)
    np.testing.assert_allclose(probabilities[0, 0], 1.0)


def test_mentr_matches_direct_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(2, 40, 7))
    labels = rng.integers(0, 7, size=40)

    np.testing.assert_allclose(
        mi.mentr_score(logits, labels), _mentr_direct(logits, labels), rtol=1e-10, atol=1e-12
    )


def test_mentr_membership_score_is_negated_mentr():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 5))
    labels = rng.integers(0, 5, size=30)

    np.testing.assert_array_equal(
        mi.mentr_membership_score(logits, labels), -mi.mentr_score(logits, labels)
    )


def test_mentr_exact_for_huge_logits():
    # Label 0 gets p_0 = e^-1000, so its term is -(1 - p_0) log p_0 = 1000. Class 1
    # gets p_1 = 1 - 2 e^-1000, so its term is -log(2 e^-1000) = 1000 - log 2.
    # Clipping p at 1e-30 would give about 1069 instead.
    logits = np.array([[0.0, 1000.0, 0.0]])

    mentr = mi.mentr_score(logits, np.array([0]))

    np.testing.assert_allclose(mentr, [2000.0 - math.log(2.0)], rtol=1e-12)


def test_mentr_zero_for_confident_correct():
    mentr = mi.mentr_score(np.array([[1000.0, 0.0, 0.0]]), np.array([0]))

    assert mentr[0] >= 0.0
    assert mentr[0] < 1e-300


def test_mentr_auc_high_for_confident_members():
    rng = np.random.default_rng(2)
    n_examples, n_classes = 500, 10
    labels = rng.integers(0, n_classes, size=n_examples)
    member_logits = rng.normal(scale=0.5, size=(n_examples, n_classes))
    member_logits[np.arange(n_examples), labels] += 8.0
    nonmember_logits = rng.normal(scale=0.5, size=(n_examples, n_classes))

    member_scores = mi.mentr_membership_score(member_logits, labels)
    nonmember_scores = mi.mentr_membership_score(nonmember_logits, labels)

    assert mi.auc(member_scores, nonmember_scores) > 0.95


def test_logit_scaled_confidence_matches_log_odds():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2.0, size=(3, 25, 6))
    labels = rng.integers(0, 6, size=25)
    label_index = np.broadcast_to(labels[None, :, None], (3, 25, 1))
    p_label = np.take_along_axis(mi.softmax_probabilities(logits), label_index, axis=-1)[..., 0]

    phi = mi.logit_scaled_confidence(logits, labels)

    assert phi.shape == (3, 25)
    np.testing.assert_allclose(phi, np.log(p_label / (1 - p_label)), rtol=1e-9, atol=1e-12)


def test_logit_scaled_confidence_huge_logits():
    logits = np.array([[1000.0, 0.0, 0.0], [1000.0, 0.0, 0.0]])

    phi = mi.logit_scaled_confidence(logits, np.array([0, 1]))

    assert np.all(np.isfinite(phi))
    np.testing.assert_allclose(phi, [1000.0 - math.log(2.0), -1000.0], rtol=1e-12)


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (np.zeros((4, 3)), np.zeros(5, dtype=int), "labels must have shape"),
        (np.zeros((4, 3)), np.full(4, 3), r"labels must lie in \[0, 3\)"),
        (np.zeros((4, 3)), np.zeros(4), "labels must be integers"),
        (np.zeros((4, 1)), np.zeros(4, dtype=int), "at least 2 classes"),
        (np.full((4, 3), np.nan), np.zeros(4, dtype=int), "non-finite"),
        (np.zeros(3), np.zeros(1, dtype=int), r"shape \(\.\.\., N, C\)"),
    ],
)
def test_score_input_validation(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        mi.logit_scaled_confidence(logits, labels)


# --------------------------------------------------------------------------- LiRA


def _shadow_setup(rng: np.random.Generator, *, n_shadows: int, n_examples: int) -> np.ndarray:
    """Random IN/OUT mask in which every example is IN and OUT for >= 2 shadow models."""
    while True:
        shadow_in = rng.random((n_shadows, n_examples)) < 0.5
        if shadow_in.sum(axis=0).min() >= 2 and (~shadow_in).sum(axis=0).min() >= 2:
            return shadow_in


@pytest.mark.parametrize("fix_variance", [False, True])
def test_lira_auc_at_chance_without_signal(fix_variance):
    rng = np.random.default_rng(4)
    n_examples = 4000
    shadow_in = _shadow_setup(rng, n_shadows=16, n_examples=n_examples)
    shadow_scores = rng.normal(size=shadow_in.shape)
    target_scores = rng.normal(size=n_examples)
    is_member = np.arange(n_examples) < n_examples // 2

    for attack in (mi.lira_online, mi.lira_offline):
        scores = attack(target_scores, shadow_scores, shadow_in, fix_variance=fix_variance)
        auc = mi.auc(scores[is_member], scores[~is_member])
        assert 0.45 < auc < 0.55, f"{attack.__name__}: AUC {auc}"


@pytest.mark.parametrize("fix_variance", [False, True])
def test_lira_auc_high_when_in_scores_shifted(fix_variance):
    rng = np.random.default_rng(5)
    n_examples = 2000
    shadow_in = _shadow_setup(rng, n_shadows=16, n_examples=n_examples)
    # A per-example offset that a global threshold cannot remove but LiRA's
    # per-example Gaussians can.
    offset = rng.uniform(-20.0, 20.0, size=n_examples)
    shadow_scores = offset + rng.normal(size=shadow_in.shape) + 3.0 * shadow_in
    is_member = np.arange(n_examples) < n_examples // 2
    target_scores = offset + rng.normal(size=n_examples) + 3.0 * is_member

    assert mi.auc(target_scores[is_member], target_scores[~is_member]) < 0.6
    for attack in (mi.lira_online, mi.lira_offline):
        scores = attack(target_scores, shadow_scores, shadow_in, fix_variance=fix_variance)
        auc = mi.auc(scores[is_member], scores[~is_member])
        assert auc > 0.95, f"{attack.__name__}: AUC {auc}"


def test_lira_hand_computed_gaussians():
    # Example 0: IN {1, 3}, OUT {-1, 1}, so mu_in = 2, mu_out = 0 and both stds are 1.
    # Example 1: IN {-1, 5}, OUT {-3, 3}, so mu_in = 2, mu_out = 0 and both stds are 3.
    # Pooled over both examples, each std is sqrt((1 + 1 + 9 + 9) / 4) = sqrt(5).
    shadow_scores = np.array([[1.0, -1.0], [3.0, 5.0], [-1.0, -3.0], [1.0, 3.0]])
    shadow_in = np.array([[True, True], [True, True], [False, False], [False, False]])
    target_scores = np.array([1.0, 1.0])
    sigma = np.array([1.0, 3.0])
    pooled = math.sqrt(5.0)

    online = mi.lira_online(target_scores, shadow_scores, shadow_in)
    online_fixed = mi.lira_online(target_scores, shadow_scores, shadow_in, fix_variance=True)
    offline = mi.lira_offline(target_scores, shadow_scores, shadow_in)
    offline_fixed = mi.lira_offline(target_scores, shadow_scores, shadow_in, fix_variance=True)

    np.testing.assert_allclose(
        online, stats.norm.logpdf(1.0, 2.0, sigma) - stats.norm.logpdf(1.0, 0.0, sigma)
    )
    np.testing.assert_allclose(
        online_fixed, stats.norm.logpdf(1.0, 2.0, pooled) - stats.norm.logpdf(1.0, 0.0, pooled)
    )
    np.testing.assert_allclose(offline, stats.norm.logcdf(1.0 / sigma))
    np.testing.assert_allclose(offline_fixed, stats.norm.logcdf([1.0 / pooled] * 2))


def test_lira_finite_when_shadow_scores_equal():
    shadow_scores = np.ones((4, 2))
    shadow_in = np.array([[True, True], [True, True], [False, False], [False, False]])

    online = mi.lira_online(np.array([1.0, 2.0]), shadow_scores, shadow_in)
    offline = mi.lira_offline(np.array([1.0, 2.0]), shadow_scores, shadow_in)

    assert np.all(np.isfinite(online)), online
    assert not np.any(np.isnan(offline)), offline


def test_lira_too_few_in_shadows():
    shadow_in = np.array([[True, False, True], [True, False, True], [False, True, False],
                          [False, False, False], [False, False, False]])
    shadow_scores = np.zeros(shadow_in.shape)

    with pytest.raises(ValueError, match=r"at least 2 IN shadow models.*example 1 has 1"):
        mi.lira_online(np.zeros(3), shadow_scores, shadow_in)


def test_lira_too_few_out_shadows():
    shadow_in = np.array([[True, True], [True, True], [False, True], [False, True]])

    with pytest.raises(ValueError, match=r"at least 2 OUT shadow models.*example 1 has 0"):
        mi.lira_online(np.zeros(2), np.zeros(shadow_in.shape), shadow_in)


def test_lira_offline_needs_only_out_shadows():
    shadow_in = np.array([[False, False], [False, False]])
    scores = mi.lira_offline(np.zeros(2), np.array([[0.0, 1.0], [2.0, 3.0]]), shadow_in)

    assert scores.shape == (2,)
    with pytest.raises(ValueError, match=r"at least 2 OUT shadow models.*example 0 has 1"):
        mi.lira_offline(np.zeros(2), np.zeros((2, 2)), np.array([[True, False], [False, False]]))


@pytest.mark.parametrize(
    ("target_scores", "shadow_scores", "shadow_in", "message"),
    [
        (np.zeros((2, 1)), np.zeros((4, 2)), np.zeros((4, 2), dtype=bool), "target_scores"),
        (np.zeros(2), np.zeros((4, 3)), np.zeros((4, 3), dtype=bool), "shadow_scores must"),
        (np.zeros(2), np.zeros((4, 2)), np.zeros((4, 3), dtype=bool), "shadow_in must have"),
        (np.zeros(2), np.zeros((4, 2)), np.zeros((4, 2), dtype=int), "boolean mask"),
        (np.array([0.0, np.inf]), np.zeros((4, 2)), np.zeros((4, 2), dtype=bool), "non-finite"),
    ],
)
def test_lira_input_validation(target_scores, shadow_scores, shadow_in, message):
    with pytest.raises(ValueError, match=message):
        mi.lira_online(target_scores, shadow_scores, shadow_in)


# --------------------------------------------------------------------------- metrics

# ROC points of this case, threshold by threshold (score >= t flags a member):
# t=6: (0, 1/5), t=5: (1/4, 1/5), t=4: (1/4, 2/5), t=3: (1/4, 3/5), t=2.5: (2/4, 3/5),
# t=2: (2/4, 4/5), t=1: (3/4, 4/5), t=0.5: (3/4, 1), t=0: (1, 1).
HAND_MEMBERS = np.array([6.0, 4.0, 3.0, 2.0, 0.5])
HAND_NONMEMBERS = np.array([0.0, 1.0, 2.5, 5.0])


@pytest.mark.parametrize(
    ("fpr", "expected_tpr"),
    [(0.25, 3 / 5), (0.3, 3 / 5), (0.5, 4 / 5), (0.74, 4 / 5), (0.75, 1.0)],
)
def test_tpr_at_fpr_hand_case(fpr, expected_tpr):
    assert mi.tpr_at_fpr(HAND_MEMBERS, HAND_NONMEMBERS, fpr=fpr) == pytest.approx(expected_tpr)


def test_tpr_at_fpr_nan_below_resolution():
    assert mi.min_resolvable_fpr(len(HAND_NONMEMBERS)) == 0.25
    assert math.isnan(mi.tpr_at_fpr(HAND_MEMBERS, HAND_NONMEMBERS, fpr=0.2))


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 1.5])
def test_tpr_at_fpr_rejects_invalid_fpr(fpr):
    with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
        mi.tpr_at_fpr(HAND_MEMBERS, HAND_NONMEMBERS, fpr=fpr)


def test_auc_hand_case():
    # Of the 5 x 4 = 20 (member, non-member) pairs the member scores higher in 13:
    # 6 beats all 4 non-members, 4 and 3 beat 3 each, 2 beats 2 and 0.5 beats 1.
    assert mi.auc(HAND_MEMBERS, HAND_NONMEMBERS) == pytest.approx(13 / 20)


def test_roc_spans_corners():
    fpr, tpr = mi.roc(HAND_MEMBERS, HAND_NONMEMBERS)

    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(tpr) >= 0)


def test_roc_rejects_empty_and_nan_scores():
    with pytest.raises(ValueError, match="nonmember_scores is empty"):
        mi.roc(HAND_MEMBERS, np.array([]))
    with pytest.raises(ValueError, match="member_scores contain 1 non-finite"):
        mi.auc(np.array([np.nan, 1.0]), HAND_NONMEMBERS)


def test_evaluate_attack_nan_below_resolution():
    rng = np.random.default_rng(6)
    members = rng.normal(loc=1.0, size=300)
    nonmembers = rng.normal(size=500)

    result = mi.evaluate_attack(members, nonmembers, fprs=(0.01, 0.001))

    assert result.auc == pytest.approx(mi.auc(members, nonmembers))
    assert result.tpr_at_fpr[0.01] == mi.tpr_at_fpr(members, nonmembers, fpr=0.01)
    assert math.isnan(result.tpr_at_fpr[0.001])
    assert (result.n_members, result.n_nonmembers) == (300, 500)
    assert result.fpr.shape == result.tpr.shape


def test_evaluate_attack_rejects_invalid_fpr():
    with pytest.raises(ValueError, match="got 0.0"):
        mi.evaluate_attack(HAND_MEMBERS, HAND_NONMEMBERS, fprs=(0.01, 0.0))
