# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # C. DP-SGD as a defense against poisoning-amplified membership exposure
#
# Appendix C of Chen et al., *Amplifying Membership Exposure via Data Poisoning*
# (NeurIPS 2022), studies how differentially private training (DP-SGD) defends against the
# two poisoning attacks. This notebook trains the transfer-learning head on clean,
# dirty-label poisoned and clean-label poisoned training sets, each without and with
# DP-SGD (Opacus: Poisson sampling, per-sample clipping, Gaussian noise, RDP accountant).
# After every epoch it records the training loss and accuracy on the normal samples
# (D_clean) and on the poisoning samples, leaving out the balancing images of D_poison.
# It reports the epsilon spent, the test accuracy and the membership-inference AUC
# (Mentr) of the target class, and, beyond the appendix, sweeps the noise multiplier
# to show how MI AUC and test accuracy trade off against epsilon under dirty-label
# poisoning.

# %% tags=["parameters"]
profile = "smoke"
output_dir = "../build/smoke/c_dpsgd"
run_dir = "../build/smoke"
cache_dir = "../build/cache"
data_root = "../data"
dataset = "mnist5k"
pool_dataset = None
extractor = "efficientnet_lite0"
input_size = 40
members_per_class = 20
nonmembers_per_class = 20
pool_per_class = 20
target_classes = [0, 1]
b_poison = 20
eps_255 = 16
crafting_iterations = 3
crafting_batch_size = 200
epochs = 3
batch_size = 100
learning_rate = 1e-3
noise_multiplier = 1.0
max_grad_norm = 1.0
delta = 1e-5
sweep_noise_multipliers = [0.5, 1.0, 2.0]
seed = 0

# %% [markdown]
# Set-up. The DP-SGD, training and crafting settings are validated here, so an invalid
# value (for example a noise multiplier <= 0 or a delta outside (0, 1)) stops the
# notebook before any work.

# %%
import logging
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from mexp_lib import dp, dp_results, plots
from mexp_lib.experiment import check_target_classes, load_study
from mexp_lib.poisoning import ATTACKS, CraftingConfig

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
plots.set_style()
training = dp.TrainingConfig(epochs=epochs, batch_size=batch_size, lr=learning_rate)
privacy = dp.PrivacyConfig(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                           delta=delta)
crafting = CraftingConfig(eps=eps_255 / 255, iterations=crafting_iterations,
                          batch_size=crafting_batch_size)
runs_dir = Path(output_dir) / "runs"
setting = (f"{dataset}, {extractor}, profile {profile}, {members_per_class} members/class, "
           f"b_poison = {b_poison}, {epochs} epochs")
print(training, privacy, crafting, sep="\n")

# %% [markdown]
# ## Data, features and poisoning sets
#
# The members (D_clean), non-members (D_test) and the attacker pool are drawn as in
# notebook A, and the frozen extractor's features come from the shared cache. The
# poisoning sets use the same dataset, splits, seed, target classes, budget and crafting
# settings as notebook A of this profile, so they are loaded from the run folder when A
# ran first instead of being crafted again.

# %%
study = load_study(dataset, extractor=extractor, members_per_class=members_per_class,
                   nonmembers_per_class=nonmembers_per_class, pool_per_class=pool_per_class,
                   seed=seed, cache_dir=cache_dir, run_dir=run_dir, input_size=input_size,
                   data_root=data_root, pool_dataset=pool_dataset)
target_classes = check_target_classes(target_classes, num_classes=study.num_classes,
                                      dataset=dataset)
poisoning_sets = {
    attack: {target: study.poisoning_set(attack, target_class=target, budget=b_poison,
                                         seed=seed, crafting=crafting)
             for target in target_classes}
    for attack in ATTACKS
}
print(f"{study.num_classes} classes, {len(study.member_features)} members, "
      f"{len(study.nonmember_features)} non-members, feature width "
      f"{study.member_features.shape[1]}")

# %% [markdown]
# ## Training with and without DP-SGD
#
# For every setting and target class, one head is trained without DP-SGD (Adam, shuffled
# mini-batches) and one with DP-SGD at the noise multiplier and clipping norm above. Both
# heads of a target class start from the same initial weights. After each epoch the
# head is evaluated on the normal samples, the poisoning samples (with the labels the
# model trains on) and the non-members. Each run is stored under `output_dir/runs`, so a
# rerun loads it instead of training again.

# %%
results = dp.run_settings(study, poisoning_sets, seed=seed, training=training,
                          privacy=privacy, store_dir=runs_dir)
dp_results.results_frame(results)[["attack", "target_class", "noise_multiplier", "epsilon",
                           "test_accuracy", "mi_auc"]].round(3)

# %% [markdown]
# ## Clean models
#
# Without poisoning there are no poisoning samples, so the curves show the normal
# samples and the held-out non-members: the gap between them is the generalisation
# gap that membership inference exploits.

# %%
#| label: fig-c-learning-clean
#| fig-cap: "Learning process of clean heads (no poisoning): loss and accuracy per epoch on the normal samples and on the held-out non-members, (a) without and (b) with DP-SGD. Lines are the mean over target classes, bands ± one standard deviation, the dashed line is chance (1/C). The figure title states dataset, extractor, profile, noise multiplier and epsilon."
figure = dp_results.plot_learning_curves(results, attack="none", num_classes=study.num_classes,
                                 noise_multiplier=noise_multiplier,
                                 title=f"No poisoning\n{setting}")
plots.save_figure(figure, output_dir, "learning_clean")
plt.show()

# %%
#| label: tbl-c-privacy-clean
#| tbl-cap: "Clean heads without and with DP-SGD: epsilon spent (RDP accountant), test accuracy on all non-members and Mentr MI AUC of target-class members vs target-class non-members; mean ± std over target classes."
plots.show_table(dp_results.privacy_table(results, attack="none", noise_multiplier=noise_multiplier),
                 output_dir, "privacy_clean");

# %%
display(Markdown(dp_results.describe_learning(results, attack="none", num_classes=study.num_classes,
                                      noise_multiplier=noise_multiplier)))

# %% [markdown]
# ## Dirty-label poisoning
#
# The poisoning samples are target-class images relabelled to other classes. A head
# that fits them has memorised wrong labels around the target class. The question is
# whether DP-SGD stops it from learning them.

# %%
#| label: fig-c-learning-dirty-label
#| fig-cap: "Learning process under the dirty-label attack: loss and accuracy per epoch on the normal samples and on the poisoning samples (against their poison labels, balancing images left out), (a) without and (b) with DP-SGD. Lines are the mean over target classes, bands ± one standard deviation, the dashed line is chance (1/C). The figure title states the setting."
figure = dp_results.plot_learning_curves(results, attack="dirty_label", num_classes=study.num_classes,
                                 noise_multiplier=noise_multiplier,
                                 title=f"Dirty-label poisoning\n{setting}")
plots.save_figure(figure, output_dir, "learning_dirty_label")
plt.show()

# %%
#| label: tbl-c-privacy-dirty-label
#| tbl-cap: "Dirty-label poisoned heads without and with DP-SGD: epsilon spent (RDP accountant), test accuracy on all non-members and Mentr MI AUC of the target class; mean ± std over target classes."
plots.show_table(dp_results.privacy_table(results, attack="dirty_label",
                                  noise_multiplier=noise_multiplier),
                 output_dir, "privacy_dirty_label");

# %%
display(Markdown(dp_results.describe_learning(results, attack="dirty_label",
                                      num_classes=study.num_classes,
                                      noise_multiplier=noise_multiplier)))

# %% [markdown]
# ## Clean-label poisoning
#
# The poisoning samples are images of the other classes with their true labels,
# perturbed within eps so that their features collide with target-class images. Their
# accuracy is measured against those true labels.

# %%
#| label: fig-c-learning-clean-label
#| fig-cap: "Learning process under the clean-label attack: loss and accuracy per epoch on the normal samples and on the poisoning samples (balancing images left out), (a) without and (b) with DP-SGD. Lines are the mean over target classes, bands ± one standard deviation, the dashed line is chance (1/C). The figure title states the setting."
figure = dp_results.plot_learning_curves(results, attack="clean_label", num_classes=study.num_classes,
                                 noise_multiplier=noise_multiplier,
                                 title=f"Clean-label poisoning (eps = {eps_255}/255)\n{setting}")
plots.save_figure(figure, output_dir, "learning_clean_label")
plt.show()

# %%
#| label: tbl-c-privacy-clean-label
#| tbl-cap: "Clean-label poisoned heads without and with DP-SGD: epsilon spent (RDP accountant), test accuracy on all non-members and Mentr MI AUC of the target class; mean ± std over target classes."
plots.show_table(dp_results.privacy_table(results, attack="clean_label",
                                  noise_multiplier=noise_multiplier),
                 output_dir, "privacy_clean_label");

# %%
display(Markdown(dp_results.describe_learning(results, attack="clean_label",
                                      num_classes=study.num_classes,
                                      noise_multiplier=noise_multiplier)))

# %% [markdown]
# ## Beyond the appendix: the privacy-utility trade-off under dirty-label poisoning
#
# The appendix uses a single noise multiplier. Here the dirty-label heads are trained
# with DP-SGD at several noise multipliers (same clipping norm, epochs and delta), and
# the non-private heads are the reference at epsilon = ∞. Runs already trained above
# are loaded from `output_dir/runs`.

# %%
sweep = dp.noise_sweep(study, poisoning_sets["dirty_label"],
                       noise_multipliers=sweep_noise_multipliers, seed=seed,
                       training=training, max_grad_norm=max_grad_norm, delta=delta,
                       store_dir=runs_dir)

# %%
#| label: fig-c-epsilon-sweep
#| fig-cap: "Dirty-label poisoning: Mentr MI AUC of the target class (left) and test accuracy (right) against the epsilon that DP-SGD spends, one point per noise multiplier (mean over target classes, error bars ± one standard deviation); the dashed line and band are the non-private heads. The figure title states the setting."
figure = dp_results.plot_noise_sweep(sweep, title=f"Dirty-label poisoning, DP-SGD noise sweep "
                                          f"(δ = {delta:g})\n{setting}")
plots.save_figure(figure, output_dir, "epsilon_sweep")
plt.show()

# %%
#| label: tbl-c-epsilon-sweep
#| tbl-cap: "Dirty-label poisoning under DP-SGD at several noise multipliers σ, and without DP-SGD: epsilon spent, test accuracy and Mentr MI AUC of the target class; mean ± std over target classes."
plots.show_table(dp_results.sweep_table(sweep), output_dir, "epsilon_sweep");

# %%
display(Markdown(dp_results.describe_sweep(sweep)))

# %% [markdown]
# Every run of this notebook, one row per head, is written to `runs.csv` in the output
# folder for further analysis.

# %%
dp_results.results_frame([*results, *sweep]).drop_duplicates(
    subset=["attack", "target_class", "noise_multiplier"]).to_csv(
    Path(output_dir) / "runs.csv", index=False)
