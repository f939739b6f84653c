# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # B. The heuristic h: three case studies
#
# Appendix B of *Amplifying Membership Exposure via Data Poisoning* (Chen et al., NeurIPS
# 2022) explains the paper's membership-exposure results with a nearest-neighbour heuristic. For a sample (x, y) of the training set D_train,
#
# h(x) = (d_out − d_in) / min(d_out, d_in),
#
# where d_in is the distance from x to its nearest other sample with label y and d_out
# the distance to its nearest sample with another label (Euclidean, in input space or in
# the feature space of g). A low h means that x lies close to another class, and the
# appendix reads a lower h as a higher membership-exposure risk. This notebook measures
# h for the target-class members of D_clean in three settings:
#
# 1. clean models built on different extractors (the appendix's Figure 6);
# 2. clean and dirty-label poisoned training sets whose attacker pool D_shadow comes from
#    the members' dataset or from another dataset (Figure 7);
# 3. classifiers whose extractor is fine-tuned together with the head, on clean,
#    dirty-label and clean-label training sets (Figure 8), next to each model's Mentr
#    membership-inference AUC.
#
# Every curve is the CDF of h, averaged over the target classes with equal weight per
# class, on a symmetric-log h axis (linear within [−1, 1]).

# %% tags=["parameters"]
profile = "smoke"
dataset = "mnist5k"
pool_dataset = None
other_pool_dataset = "digits"
data_root = "../data"
extractor = "efficientnet_lite0"
extractors = ["efficientnet_lite0", "efficientnet_lite1"]
untrained_reference = "efficientnet_lite0"
input_size = 40
members_per_class = 20
nonmembers_per_class = 20
pool_per_class = 20
target_classes = [0, 1]
shadow_target_classes = [0, 1]
b_poison = 20
eps_255 = 16
crafting_iterations = 3
crafting_batch_size = 200
finetune_target_classes = [0]
finetune_input_size = 40
finetune_members_per_class = 10
finetune_epochs = 1
finetune_batch_size = 50
finetune_lr = 1e-5
finetune_update_batch_norm = False
head_warmup_epochs = 3
chunk_size = 1024
seed = 0
output_dir = "../build/scratch/b_heuristic"
run_dir = "../build/scratch"
cache_dir = "../build/cache"

# %%
import logging
import time
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from mexp_lib import finetune, h_studies, plots
from mexp_lib.experiment import check_target_classes, load_study
from mexp_lib.poisoning import ATTACKS, CraftingConfig

logging.basicConfig(level=logging.WARNING)
plots.set_style()
output_dir = Path(output_dir)
output_dir.mkdir(parents=True, exist_ok=True)
crafting = CraftingConfig(eps=eps_255 / 255, iterations=crafting_iterations,
                          batch_size=crafting_batch_size)
started = time.perf_counter()

# %% [markdown]
# ## Setting
#
# One draw of the splits serves all three case studies. The dataset, split sizes, seed,
# budget and crafting settings equal notebook A's for the same profile, so the poisoning
# sets that notebook A stored under the run folder are reused here, not crafted again.
# Case study 2 draws a second attacker pool from `other_pool_dataset`; its members and
# non-members are the same images.

# %%
split_sizes = dict(members_per_class=members_per_class,
                   nonmembers_per_class=nonmembers_per_class, pool_per_class=pool_per_class)
study = load_study(dataset, extractor=extractor, seed=seed, cache_dir=cache_dir,
                   run_dir=run_dir, input_size=input_size, data_root=data_root,
                   pool_dataset=pool_dataset, **split_sizes)
other_pool_study = load_study(dataset, extractor=study.extractor, seed=seed,
                              cache_dir=cache_dir, run_dir=run_dir, data_root=data_root,
                              pool_dataset=other_pool_dataset, **split_sizes)
class_names = study.class_names
for classes in (target_classes, shadow_target_classes, finetune_target_classes):
    check_target_classes(classes, num_classes=study.num_classes, dataset=dataset)
display(Markdown(
    f"Profile **{profile}**: dataset `{dataset}` ({study.num_classes} classes) with "
    f"{members_per_class} members and {nonmembers_per_class} non-members per class; "
    f"attacker pools of {pool_per_class} images per class from `{pool_dataset or dataset}` "
    f"and from `{other_pool_dataset}`; inputs resized to {input_size}×{input_size} px; "
    f"b_poison = {b_poison}; target classes "
    f"{', '.join(class_names[t] for t in target_classes)}."
))

# %% [markdown]
# ## Case study 1: clean models across extractors
#
# With no poisoning, D_train is D_clean. h of the target-class members is measured in
# each extractor's feature space (ImageNet weights), and once in input space: the images
# in the form every model receives (RGB, resized to the input size, pixel values in
# [0, 1], flattened). Input-space h depends on no extractor except through the input size, so it
# is one curve of its own. A randomly initialised copy of `untrained_reference` shows how
# much of the feature-space structure comes from pretraining. (The appendix's Figure 6
# caption reads "input space", but its text measures h in feature space, and only feature
# space can separate the extractors.)

# %%
extractor_curves = h_studies.extractor_h_curves(
    study.splits.members, dataset=dataset, extractors=extractors,
    untrained_reference=untrained_reference, input_size=input_size,
    target_classes=target_classes, cache_dir=cache_dir, chunk_size=chunk_size)

# %%
#| label: fig-b-cdf-extractors
#| fig-cap: "CDF of h of the target-class members of clean models, per extractor's feature space and in input space, averaged over the target classes; symmetric-log h axis (linear within [-1, 1])."
palette = dict(zip(extractors, sns.color_palette("colorblind", len(extractors)).as_hex()))
input_label = h_studies.input_space_label(input_size)
colors = {**palette, input_label: "black"}
styles = {input_label: ":"}
if untrained_reference:
    colors[h_studies.untrained_label(untrained_reference)] = "#7f7f7f"
    styles[h_studies.untrained_label(untrained_reference)] = "--"
figure, axis = plt.subplots(figsize=(6.4, 4.0))
h_studies.plot_h_cdfs(axis, extractor_curves, colors=colors, styles=styles)
axis.set_title(f"{dataset}, clean models, {input_size} px, profile {profile}")
h_studies.add_figure_legend(figure, axis, columns=2)
plots.save_figure(figure, output_dir, "cdf_extractors")
plt.show()

# %%
#| label: tbl-b-h-extractors
#| tbl-cap: "h of the target-class members of clean models: share below 0, 10th percentile and median of the class-averaged distribution."
extractor_table = h_studies.h_table(extractor_curves, class_names=class_names)
plots.show_table(extractor_table, output_dir, "h_extractors")

# %% [markdown]
# The appendix finds the lowest h for InceptionV3 and reads it as the reason why
# InceptionV3 models have the highest MI AUC. The cell below ranks this run's curves by
# median h.

# %%
pretrained_rows = extractor_table.loc[list(extractors)]
ranking = pretrained_rows.sort_values("median h")
lines = [f"- `{name}`: median h {row['median h']:.3f}, p10 {row['p10 h']:.3f}, "
         f"{row['fraction h < 0']:.1%} of members with h < 0" for name, row in ranking.iterrows()]
text = (f"Measured in this run: among the pretrained extractors, `{ranking.index[0]}` has the "
        f"lowest median h and `{ranking.index[-1]}` the highest.\n\n" + "\n".join(lines))
text += (f"\n\nIn input space the median h is {extractor_table.loc[input_label, 'median h']:.3f}.")
if untrained_reference:
    untrained_median = extractor_table.loc[h_studies.untrained_label(untrained_reference),
                                           "median h"]
    pretrained_median = extractor_table.loc[untrained_reference, "median h"]
    text += (f" The untrained `{untrained_reference}` has a median h of {untrained_median:.3f}, "
             f"against {pretrained_median:.3f} with ImageNet weights.")
display(Markdown(text))

# %% [markdown]
# ## Case study 2: the attacker's shadow data
#
# Dirty-label poisoning relabels b_poison − b_poison/C target-class images of the attacker
# pool to other classes. Here D_train = D_clean ∪ D_poison, with the poison labels, and h
# is measured for the target-class members, in the feature space of `extractor` and in
# input space. Three training sets per target class: clean, dirty-label with D_shadow from
# the members' dataset, and dirty-label with D_shadow from `other_pool_dataset`. The
# appendix uses STL-10 for CIFAR-10. The quick profile uses scikit-learn's 8×8 digits for
# MNIST-5k, resized to the input size like every image.

# %%
same_pool_label = f"dirty-label, D_shadow from {pool_dataset or dataset}"
other_pool_label = f"dirty-label, D_shadow from {other_pool_dataset}"
shadow_curves = h_studies.shadow_pool_h_curves(
    {same_pool_label: study, other_pool_label: other_pool_study},
    target_classes=shadow_target_classes, budget=b_poison, seed=seed, chunk_size=chunk_size)

# %%
#| label: fig-b-cdf-shadow
#| fig-cap: "CDF of h of the target-class members for a clean and two dirty-label training sets whose D_shadow comes from the members' dataset or from another dataset; rows: feature space of the extractor and input space; columns: target classes; symmetric-log h axis."
shadow_colors = {plots.ATTACK_LABELS["none"]: plots.ATTACK_COLORS["none"],
                 same_pool_label: plots.ATTACK_COLORS["dirty_label"],
                 other_pool_label: "#dd8452"}
figure = h_studies.shadow_pool_figure(shadow_curves, class_names=class_names,
                                     colors=shadow_colors, styles={other_pool_label: "--"})
figure.suptitle(f"{dataset}, {extractor}, b_poison={b_poison}, profile {profile}", y=1.02)
plots.save_figure(figure, output_dir, "cdf_shadow")
plt.show()

# %%
#| label: tbl-b-h-shadow
#| tbl-cap: "h of the target-class members per training set, space and target class: share below 0, 10th percentile and median."
shadow_table = h_studies.shadow_pool_table(shadow_curves, class_names=class_names)
plots.show_table(shadow_table, output_dir, "h_shadow")

# %% [markdown]
# The appendix finds that the clean curve and the dirty-label curve with STL-10 as
# D_shadow nearly overlap, which matches the small MI AUC increase it reports for that
# setting. The cell below compares the median h of each poisoned set with the clean one.

# %%
lines = []
for (space, name), part in shadow_table.groupby(["space", "target class"], sort=False):
    medians = part["median h"]
    clean_median = medians[plots.ATTACK_LABELS["none"]]
    changes = ", ".join(f"{label}: {medians[label]:.3f} ({medians[label] - clean_median:+.3f})"
                        for label in (same_pool_label, other_pool_label))
    lines.append(f"- {space}, class {name}: clean {clean_median:.3f}; {changes}")
medians = shadow_table.set_index(["space", "target class"], append=True)["median h"]
clean = medians.xs(plots.ATTACK_LABELS["none"], level=0)
same_shift = (medians.xs(same_pool_label, level=0) - clean).abs()
other_shift = (medians.xs(other_pool_label, level=0) - clean).abs()
verdict = ("smaller than" if (other_shift < same_shift).all() else "not always smaller than")
display(Markdown(
    "Median h measured in this run (change against the clean set):\n\n" + "\n".join(lines)
    + f"\n\nThe pool from `{other_pool_dataset}` moves the median h by at most "
    f"{other_shift.max():.3f}, {verdict} the shift of the pool from "
    f"`{pool_dataset or dataset}` (at least {same_shift.min():.3f})."))

# %% [markdown]
# ## Case study 3: fine-tuned classifiers
#
# Here the extractor is trained together with the head, with Adam at learning rate
# `finetune_lr` for every weight (1e-5 in the paper). The training set is D_clean
# plus the clean-label or dirty-label D_poison of each target class, or D_clean alone. With
# `head_warmup_epochs` > 0 the head is first trained on frozen features (the
# transfer-learning recipe); fine-tuning then starts from that model, which the table
# reports as "before". h is measured in each fine-tuned model's own feature space. The
# Mentr AUC scores the model's target-class members against target-class non-members.
#
# Fine-tuning is the expensive step, so a profile may reduce it: it trains on
# `finetune_members_per_class` members per class (all when null) at
# `finetune_input_size` pixels for `finetune_epochs` epochs, for the classes in
# `finetune_target_classes`. The poisons are the ones stored for notebook A, crafted
# against the frozen extractor at `input_size` pixels. With `finetune_update_batch_norm`
# false, batch normalisation keeps its pretrained statistics (inference mode), as Keras
# recommends for fine-tuning. With true, it re-estimates them on the training images, and
# with few epochs the head has little time to adapt to the features that shift with them.

# %%
finetuning_config = finetune.FineTuningConfig(
    lr=finetune_lr, epochs=finetune_epochs, batch_size=finetune_batch_size,
    head_warmup_epochs=head_warmup_epochs, update_batch_norm=finetune_update_batch_norm,
    seed=seed)
finetuning_runs = h_studies.fine_tuning_runs(
    study, attacks=ATTACKS, target_classes=finetune_target_classes, budget=b_poison,
    seed=seed, crafting=crafting, input_size=finetune_input_size,
    members_per_class=finetune_members_per_class, config=finetuning_config,
    store_dir=str(output_dir / "finetuning"), chunk_size=chunk_size)
tuned_curves, before_curves = h_studies.fine_tuning_curves(finetuning_runs)
display(Markdown(
    f"Fine-tuning setting: `{extractor}` at {finetune_input_size}×{finetune_input_size} px, "
    f"{finetune_members_per_class or members_per_class} members per class plus D_poison, "
    f"{finetune_epochs} epochs at learning rate {finetune_lr:g}, batch size "
    f"{finetune_batch_size}, head warm-up {head_warmup_epochs} epochs, batch-norm "
    f"statistics {'re-estimated' if finetune_update_batch_norm else 'kept from pretraining'}; "
    f"target classes "
    f"{', '.join(class_names[t] for t in finetune_target_classes)}."))

# %%
#| label: fig-b-cdf-finetune
#| fig-cap: "CDF of h of the target-class members in the feature space of fine-tuned models (solid) and of the models fine-tuning starts from (dashed), for clean, dirty-label and clean-label training sets, averaged over the fine-tuning target classes; symmetric-log h axis."
curves, colors, styles = {}, {}, {}
for attack in ATTACKS:
    for suffix, source, style in (("fine-tuned", tuned_curves, "-"),
                                  ("before fine-tuning", before_curves, "--")):
        label = f"{plots.ATTACK_LABELS[attack]}, {suffix}"
        curves[label], colors[label], styles[label] = source[attack], plots.ATTACK_COLORS[attack], style
figure, axis = plt.subplots(figsize=(6.4, 4.0))
h_studies.plot_h_cdfs(axis, curves, colors=colors, styles=styles)
axis.set_title(f"{dataset}, {extractor} fine-tuned at {finetune_input_size} px, "
               f"{finetune_epochs} epochs, profile {profile}")
h_studies.add_figure_legend(figure, axis, columns=2)
plots.save_figure(figure, output_dir, "cdf_finetune")
plt.show()

# %%
#| label: tbl-b-finetune
#| tbl-cap: "Fine-tuned models: median and 10th percentile of h of the target-class members, Mentr MI AUC and test accuracy, after and before fine-tuning, and the relative change of the extractor's weights and of the members' features; means over the fine-tuning target classes."
finetune_table = h_studies.fine_tuning_table(finetuning_runs, class_names=class_names)
plots.show_table(finetune_table, output_dir, "finetune", float_format=".3g")

# %% [markdown]
# The appendix finds a large gap between dirty-label and clean fine-tuned models and
# nearly overlapping clean and clean-label curves. The cell below states what this run
# measured: how far fine-tuning moved the network, and whether the model with the lower
# median h also has the higher Mentr AUC.

# %%
weight_change = finetune_table["weight change"].max()
statistics_change = finetune_table["batch-norm statistics change"].max()
feature_shift = finetune_table["feature shift"].max()
by_h = finetune_table.sort_values("median h")
by_auc = finetune_table.sort_values("Mentr AUC", ascending=False)
lines = [f"- {attack}: median h {row['median h']:.3f} (before {row['median h before']:.3f}), "
         f"Mentr AUC {row['Mentr AUC']:.3f} (before {row['Mentr AUC before']:.3f}), test "
         f"accuracy {row['test accuracy']:.3f} (before {row['test accuracy before']:.3f})"
         for attack, row in finetune_table.iterrows()]
same_order = list(by_h.index) == list(by_auc.index)
text = ("Measured in this run:\n\n" + "\n".join(lines) +
        f"\n\nFine-tuning changed the extractor's weights by at most {weight_change:.1e} of "
        f"their norm, its batch-norm running statistics by at most {statistics_change:.1e} "
        f"of theirs, and the members' features by a median of at most {feature_shift:.1%}.")
if weight_change < 1e-3:
    text += (f" At learning rate {finetune_lr:g} and {finetune_epochs} epochs the weights "
             "barely move")
    if feature_shift < 0.05:
        text += ", and neither do the features."
    elif statistics_change > 0:
        text += ("; the features still change, through the re-estimated batch-norm "
                 "statistics and the small weight updates together.")
    else:
        text += "; the features still change, through these small weight updates alone."
text += (f" Ordering the models by median h (lowest first: {', '.join(by_h.index)}) "
         f"{'gives' if same_order else 'does not give'} the order by Mentr AUC (highest "
         f"first: {', '.join(by_auc.index)}).")
display(Markdown(text))

# %%
display(Markdown(f"Notebook wall time: {time.perf_counter() - started:.0f} s "
                 f"(profile {profile})."))
