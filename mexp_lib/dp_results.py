"""Notebook C's tables, figures and generated text, from the runs of `mexp_lib.dp`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator, NullFormatter

from .dp import CURVE_GROUPS, GROUP_COLORS, GROUP_LABELS, NONMEMBER, NORMAL, POISON, RunResult
from .plots import ATTACK_LABELS, mean_std_table_cell

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
