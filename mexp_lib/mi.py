"""Membership-inference scores, LiRA and ROC metrics.

Every attack score in this module follows one sign convention: a higher score means
"more likely a member". The one exception is `mentr_score`, which returns the modified
entropy itself (lower means member), and `mentr_membership_score` negates it.

Logits have shape (..., N, C): N examples, C classes and optional leading axes, for
example one per shadow model. Labels are integers of shape (N,).

Sources:
    Song and Mittal, "Systematic Evaluation of Privacy Risks of Machine Learning
    Models", USENIX Security 2021 (modified entropy).
    Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022
    (LiRA). The reference implementation is research/mi_lira_2021/plot.py in
    github.com/tensorflow/privacy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats
from sklearn import metrics

# Floor on the standard deviations that LiRA fits, so that a per-example Gaussian stays
# defined when all its shadow scores are equal. The reference implementation adds the
# same 1e-30 to every standard deviation.
MIN_STD = 1e-30


# --------------------------------------------------------------------------- scores


def _validate_logits_and_labels(
    logits: ArrayLike, labels: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim < 2:
        raise ValueError(
            f"logits must have shape (..., N, C), got shape {logits.shape}. "
            "Put the class axis last."
        )
    n_examples, n_classes = logits.shape[-2:]
    if n_classes < 2:
        raise ValueError(f"logits must have at least 2 classes, got C={n_classes}.")
    if not np.all(np.isfinite(logits)):
        raise ValueError(
            f"logits contain {np.count_nonzero(~np.isfinite(logits))} non-finite values. "
            "Pass the raw finite logits of the model."
        )
    if labels.shape != (n_examples,):
        raise ValueError(
            f"labels must have shape (N,) = ({n_examples},) to match logits of shape "
            f"{logits.shape}, got {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}) for C={n_classes} classes, "
            f"got values from {labels.min()} to {labels.max()}."
        )
    return logits, labels.astype(np.int64)


def _one_hot(labels: NDArray[np.int64], n_classes: int) -> NDArray[np.bool_]:
    """Boolean mask of shape (N, C) that is True at each example's label."""
    return labels[:, None] == np.arange(n_classes)


def softmax_probabilities(logits: ArrayLike) -> NDArray[np.float64]:
    """Compute softmax probabilities over the last axis.

    Args:
        logits: Array of shape (..., C).

    Returns:
        Probabilities of the same shape. scipy subtracts the maximum logit first, so
        large logits do not overflow.
    """
    return special.softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def mentr_score(logits: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
    """Compute the modified entropy of Song and Mittal (2021). Lower means member.

        Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)

    log p comes from the log-softmax. log(1 - p_i) uses log1p(-p_i) for every class
    except the arg-max class, the only one that can have p_i > 1/2. For that class it
    is computed as logsumexp(z_{j != i}) - logsumexp(z), which stays exact when p_i
    rounds to 1. So the score is finite for any finite logits, and no clipping is needed.

    Args:
        logits: Array of shape (..., N, C).
        labels: Integer labels of shape (N,).

    Returns:
        Mentr of shape (..., N), non-negative.

    Raises:
        ValueError: If the shapes do not match, a label is out of range, C < 2 or a
            logit is not finite.
    """
    logits, labels = _validate_logits_and_labels(logits, labels)
    n_classes = logits.shape[-1]
    is_label = _one_hot(labels, n_classes)

    log_p = special.log_softmax(logits, axis=-1)
    p = np.exp(log_p)
    top_class = np.argmax(logits, axis=-1)
    is_top = top_class[..., None] == np.arange(n_classes)
    # The arg-max entries are replaced below, so mask them out of log1p, where p may be 1.
    log_1mp = np.log1p(-np.where(is_top, 0.0, p))
    log_1mp_top = _logsumexp_excluding(logits, is_top) - special.logsumexp(logits, axis=-1)
    log_1mp = np.where(is_top, log_1mp_top[..., None], log_1mp)

    # -(1 - p_y) log p_y
    label_term = -np.exp(np.sum(log_1mp, axis=-1, where=is_label)) * np.sum(
        log_p, axis=-1, where=is_label
    )
    # -sum_{i != y} p_i log(1 - p_i)
    other_term = -np.sum(p * log_1mp, axis=-1, where=~is_label)
    return label_term + other_term


def mentr_membership_score(logits: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
    """Compute -Mentr, the modified-entropy attack score where higher means member.

    Args:
        logits: Array of shape (..., N, C).
        labels: Integer labels of shape (N,).

    Returns:
        -Mentr of shape (..., N).
    """
    return -mentr_score(logits, labels)


def _logsumexp_excluding(
    logits: NDArray[np.float64], excluded: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """Compute logsumexp over the last axis, leaving out the entries where `excluded`."""
    return special.logsumexp(np.where(excluded, -np.inf, logits), axis=-1)


def logit_scaled_confidence(logits: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
    """Compute LiRA's logit-scaled confidence phi = log(p_y / (1 - p_y)).

    It is computed as z_y - logsumexp(z_{y' != y}), which equals
    log p_y - log(sum_{y' != y} p_{y'}) without forming 1 - p_y, so it stays finite
    and accurate when p_y rounds to 0 or 1.

    Args:
        logits: Array of shape (..., N, C), for example (M, N, C) for M shadow models.
        labels: Integer labels of shape (N,).

    Returns:
        phi of shape (..., N). Higher means a more confident correct prediction.

    Raises:
        ValueError: If the shapes do not match, a label is out of range, C < 2 or a
            logit is not finite.
    """
    logits, labels = _validate_logits_and_labels(logits, labels)
    is_label = _one_hot(labels, logits.shape[-1])
    label_logit = np.sum(logits, axis=-1, where=is_label)
    return label_logit - _logsumexp_excluding(logits, is_label)


# --------------------------------------------------------------------------- LiRA


def _validate_shadow_inputs(
    target_scores: ArrayLike, shadow_scores: ArrayLike, shadow_in: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    target_scores = np.asarray(target_scores, dtype=np.float64)
    shadow_scores = np.asarray(shadow_scores, dtype=np.float64)
    shadow_in = np.asarray(shadow_in)
    if target_scores.ndim != 1:
        raise ValueError(
            f"target_scores must have shape (N,), got {target_scores.shape}."
        )
    n_examples = target_scores.shape[0]
    if shadow_scores.ndim != 2 or shadow_scores.shape[1] != n_examples:
        raise ValueError(
            f"shadow_scores must have shape (M, N) with N={n_examples}, "
            f"got {shadow_scores.shape}."
        )
    if shadow_in.shape != shadow_scores.shape:
        raise ValueError(
            f"shadow_in must have the shape of shadow_scores {shadow_scores.shape}, "
            f"got {shadow_in.shape}."
        )
    if shadow_in.dtype != np.bool_:
        raise ValueError(
            f"shadow_in must be a boolean mask, got dtype {shadow_in.dtype}. "
            "Convert it with shadow_in.astype(bool)."
        )
    for name, values in (("target_scores", target_scores), ("shadow_scores", shadow_scores)):
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"{name} contain {np.count_nonzero(~np.isfinite(values))} non-finite "
                "values. Compute scores with logit_scaled_confidence, which stays finite."
            )
    return target_scores, shadow_scores, shadow_in


def _require_shadow_count(counts: NDArray[np.int64], *, side: str, attack: str) -> None:
    """Raise ValueError if an example has fewer than 2 shadow models on one side."""
    too_few = np.flatnonzero(counts < 2)
    if too_few.size:
        first = too_few[0]
        raise ValueError(
            f"{attack} LiRA needs at least 2 {side} shadow models per example, but "
            f"{too_few.size} of {counts.size} examples have fewer (example {first} has "
            f"{counts[first]}). "
            f"Train more shadow models so that every example is {side} in at least 2."
        )


def _fit_gaussians(
    shadow_scores: NDArray[np.float64], mask: NDArray[np.bool_], *, fix_variance: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Fit one Gaussian per example (column) to the shadow scores selected by `mask`.

    Returns the mean and the standard deviation (ddof=0, floored at MIN_STD), both of
    shape (N,). With fix_variance the standard deviation is one value pooled over all
    examples. It is the root mean square deviation of every selected score from its
    own example's mean.
    """
    counts = mask.sum(axis=0)
    mu = np.sum(shadow_scores, axis=0, where=mask) / counts
    squared_deviation = (shadow_scores - mu) ** 2
    if fix_variance:
        sigma = np.sqrt(np.sum(squared_deviation, where=mask) / counts.sum())
        sigma = np.full_like(mu, sigma)
    else:
        sigma = np.sqrt(np.sum(squared_deviation, axis=0, where=mask) / counts)
    return mu, np.maximum(sigma, MIN_STD)


def lira_online(
    target_scores: ArrayLike,
    shadow_scores: ArrayLike,
    shadow_in: ArrayLike,
    *,
    fix_variance: bool = False,
) -> NDArray[np.float64]:
    """Score membership with online LiRA (Carlini et al., 2022). Higher means member.

    For each example, fit N(mu_in, sigma_in^2) to the scores of the shadow models
    that trained on it (IN) and N(mu_out, sigma_out^2) to the others (OUT). The score
    is the log-likelihood ratio

        log N(s; mu_in, sigma_in) - log N(s; mu_out, sigma_out)

    for the target model's score s. The means are sample means. The reference
    implementation uses the median instead, and with fix_variance it takes np.std of
    all IN scores around their global mean and uses it for OUT too. Here the pooled
    deviations are taken from each example's own mean, separately for IN and OUT.

    Args:
        target_scores: Scores of the target model, shape (N,), usually
            `logit_scaled_confidence`.
        shadow_scores: Scores of M shadow models on the same examples, shape (M, N).
        shadow_in: Boolean mask of shape (M, N), True where shadow model m trained on
            example n.
        fix_variance: If True, use one standard deviation for IN and one for OUT,
            pooled over all examples. LiRA uses this with few shadow models.

    Returns:
        Membership scores of shape (N,).

    Raises:
        ValueError: If the shapes or dtypes do not match, a score is not finite, or an
            example has fewer than 2 IN or fewer than 2 OUT shadow models.
    """
    target_scores, shadow_scores, shadow_in = _validate_shadow_inputs(
        target_scores, shadow_scores, shadow_in
    )
    _require_shadow_count(shadow_in.sum(axis=0), side="IN", attack="Online")
    _require_shadow_count((~shadow_in).sum(axis=0), side="OUT", attack="Online")

    mu_in, sigma_in = _fit_gaussians(shadow_scores, shadow_in, fix_variance=fix_variance)
    mu_out, sigma_out = _fit_gaussians(shadow_scores, ~shadow_in, fix_variance=fix_variance)
    log_likelihood_in = stats.norm.logpdf(target_scores, loc=mu_in, scale=sigma_in)
    log_likelihood_out = stats.norm.logpdf(target_scores, loc=mu_out, scale=sigma_out)
    return log_likelihood_in - log_likelihood_out


def lira_offline(
    target_scores: ArrayLike,
    shadow_scores: ArrayLike,
    shadow_in: ArrayLike,
    *,
    fix_variance: bool = False,
) -> NDArray[np.float64]:
    """Score membership with offline LiRA (Carlini et al., 2022). Higher means member.

    Only the OUT shadow models are used. For each example, fit N(mu_out, sigma_out^2)
    to their scores and return the one-sided log-probability

        log Pr[Z < s],  Z ~ N(mu_out, sigma_out^2),

    which is large when the target model is more confident than models that did not
    train on the example. The paper describes this one-sided test. The reference
    implementation's plot.py instead scores with the two-sided log density of the OUT
    Gaussian, and centres on the median where this uses the mean.

    Args:
        target_scores: Scores of the target model, shape (N,).
        shadow_scores: Scores of M shadow models, shape (M, N).
        shadow_in: Boolean mask of shape (M, N), True where shadow model m trained on
            example n. The IN entries are ignored.
        fix_variance: If True, use one OUT standard deviation pooled over all examples.

    Returns:
        Membership scores of shape (N,), all <= 0.

    Raises:
        ValueError: If the shapes or dtypes do not match, a score is not finite, or an
            example has fewer than 2 OUT shadow models.
    """
    target_scores, shadow_scores, shadow_in = _validate_shadow_inputs(
        target_scores, shadow_scores, shadow_in
    )
    _require_shadow_count((~shadow_in).sum(axis=0), side="OUT", attack="Offline")

    mu_out, sigma_out = _fit_gaussians(shadow_scores, ~shadow_in, fix_variance=fix_variance)
    return stats.norm.logcdf(target_scores, loc=mu_out, scale=sigma_out)


# --------------------------------------------------------------------------- metrics


def _labels_and_scores(
    member_scores: ArrayLike, nonmember_scores: ArrayLike
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Stack both score sets into sklearn's (y_true, y_score) with members positive."""
    member_scores = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmember_scores = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    for name, values in (("member_scores", member_scores), ("nonmember_scores", nonmember_scores)):
        if values.size == 0:
            raise ValueError(
                f"{name} is empty, but a ROC curve needs at least one score of each class."
            )
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"{name} contain {np.count_nonzero(~np.isfinite(values))} non-finite values. "
                "Drop or clip them before computing the ROC curve."
            )
    is_member = np.concatenate(
        [np.ones(member_scores.size, dtype=bool), np.zeros(nonmember_scores.size, dtype=bool)]
    )
    return is_member, np.concatenate([member_scores, nonmember_scores])


def roc(
    member_scores: ArrayLike, nonmember_scores: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Compute the ROC curve with members as the positive class.

    Every threshold is kept (drop_intermediate=False), so the curve can be searched
    exactly by `tpr_at_fpr`. The first point is (0, 0).

    Args:
        member_scores: Attack scores of members, any shape. Higher means member.
        nonmember_scores: Attack scores of non-members, any shape.

    Returns:
        (fpr, tpr), two non-decreasing arrays of equal length.

    Raises:
        ValueError: If a score set is empty or contains a non-finite value.
    """
    is_member, scores = _labels_and_scores(member_scores, nonmember_scores)
    fpr, tpr, _ = metrics.roc_curve(is_member, scores, drop_intermediate=False)
    return fpr, tpr


def auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """Compute the area under the ROC curve with members as the positive class.

    It equals Pr[member score > non-member score], counting ties as 1/2.

    Args:
        member_scores: Attack scores of members. Higher means member.
        nonmember_scores: Attack scores of non-members.

    Returns:
        The AUC in [0, 1]. 0.5 is chance.

    Raises:
        ValueError: If a score set is empty or contains a non-finite value.
    """
    is_member, scores = _labels_and_scores(member_scores, nonmember_scores)
    return float(metrics.roc_auc_score(is_member, scores))


def min_resolvable_fpr(n_nonmembers: int) -> float:
    """Return 1 / n_nonmembers, the smallest non-zero FPR that n non-members resolve.

    Below it, the only admissible ROC point is the one that flags no non-member at all,
    so a TPR there reflects the single highest non-member score, not a rate.
    """
    if n_nonmembers < 1:
        raise ValueError(f"n_nonmembers must be >= 1, got {n_nonmembers}.")
    return 1.0 / n_nonmembers


def tpr_at_fpr(member_scores: ArrayLike, nonmember_scores: ArrayLike, *, fpr: float) -> float:
    """Compute the TPR of the attack at a fixed false-positive rate.

    The result is the largest TPR among the ROC points whose FPR is <= `fpr`. The
    reference LiRA plot.py uses a strict FPR < fpr instead.

    Args:
        member_scores: Attack scores of members. Higher means member.
        nonmember_scores: Attack scores of non-members.
        fpr: The false-positive rate, in the open interval (0, 1).

    Returns:
        The TPR, or NaN when fpr < min_resolvable_fpr(number of non-members), because
        with n non-members an FPR below 1/n cannot be resolved.

    Raises:
        ValueError: If fpr is not in (0, 1), or a score set is empty or contains a
            non-finite value.
    """
    _validate_fpr(fpr)
    roc_fpr, roc_tpr = roc(member_scores, nonmember_scores)
    return _tpr_at_fpr_on_curve(
        roc_fpr, roc_tpr, fpr=fpr, n_nonmembers=np.asarray(nonmember_scores).size
    )


def _validate_fpr(fpr: float) -> None:
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in the open interval (0, 1), got {fpr}.")


def _tpr_at_fpr_on_curve(
    roc_fpr: NDArray[np.float64], roc_tpr: NDArray[np.float64], *, fpr: float, n_nonmembers: int
) -> float:
    if fpr < min_resolvable_fpr(n_nonmembers):
        return float("nan")
    return float(np.max(roc_tpr[roc_fpr <= fpr]))


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """ROC summary of one membership-inference attack, members as the positive class.

    Attributes:
        auc: Area under the ROC curve.
        tpr_at_fpr: TPR at each requested FPR (see `tpr_at_fpr`). NaN for an FPR below
            1 / n_nonmembers, which this many non-members cannot resolve.
        fpr: False-positive rates of the full ROC curve.
        tpr: True-positive rates of the full ROC curve.
        n_members: Number of member scores.
        n_nonmembers: Number of non-member scores.
    """

    auc: float
    tpr_at_fpr: dict[float, float]
    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]
    n_members: int
    n_nonmembers: int


def evaluate_attack(
    member_scores: ArrayLike,
    nonmember_scores: ArrayLike,
    *,
    fprs: Sequence[float] = (0.01, 0.001),
) -> AttackResult:
    """Compute the AUC, the TPR at each FPR in `fprs` and the ROC curve of an attack.

    Args:
        member_scores: Attack scores of members. Higher means member.
        nonmember_scores: Attack scores of non-members.
        fprs: False-positive rates, each in (0, 1), at which to report the TPR.

    Returns:
        The AttackResult. Its tpr_at_fpr maps each FPR to its TPR, NaN where
        fpr < 1 / n_nonmembers.

    Raises:
        ValueError: If an FPR is not in (0, 1), or a score set is empty or contains a
            non-finite value.
    """
    for target_fpr in fprs:
        _validate_fpr(target_fpr)
    fpr, tpr = roc(member_scores, nonmember_scores)
    n_nonmembers = int(np.asarray(nonmember_scores).size)
    tpr_at_each_fpr = {
        float(target_fpr): _tpr_at_fpr_on_curve(
            fpr, tpr, fpr=target_fpr, n_nonmembers=n_nonmembers
        )
        for target_fpr in fprs
    }
    return AttackResult(
        auc=auc(member_scores, nonmember_scores),
        tpr_at_fpr=tpr_at_each_fpr,
        fpr=fpr,
        tpr=tpr,
        n_members=int(np.asarray(member_scores).size),
        n_nonmembers=n_nonmembers,
    )
