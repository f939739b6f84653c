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
# # D. Clean-label poisons: galleries and crafting statistics
#
# The appendix shows clean-label poisons crafted by feature collision against the
# InceptionV3 extractor with eps = 16/255, for MNIST, CelebA, CIFAR-10, PatchCamelyon and
# STL-10: one grid per dataset whose rows are target classes and whose columns are the
# poisons' labels, with examples chosen at random rather than picked by eye.
#
# This notebook draws the same grids for the datasets of the profile, with the poisons
# chosen at random with the profile's seed. For a few random poisons it shows the seed
# image, the poison, the perturbation amplified around mid-gray and the base image whose
# features the poison was crafted to collide with. A table gives the perturbation size,
# how far crafting moved the poisons' features towards their bases, and the crafting time.
#
# The poisoning sets of notebook A are reused. For A's dataset and target classes this
# notebook requests exactly A's sets: they are read from the run's `poisons/` folder when
# A ran first, or crafted here and read by A later. The other target classes get a smaller
# set, just large enough for the gallery, crafted with the same settings.

# %% tags=["parameters"]
profile = "smoke"
# Notebook A's setting, equal to params/<profile>/a_lira.yaml, where `shared_target_classes`
# is called `target_classes`. These keys decide which stored poisoning sets are reused.
dataset = "mnist5k"
pool_dataset = None
members_per_class = 20
nonmembers_per_class = 20
pool_per_class = 20
shared_target_classes = [0, 1]
b_poison = 20
eps_255 = 16
crafting_iterations = 3
crafting_batch_size = 200
input_size = 40
seed = 0
# This notebook's own settings.
extractor = "efficientnet_lite0"
datasets = ["mnist5k"]
dataset_splits = {}
poisons_per_target = 9
crafting_examples = 4
data_root = "../data"
output_dir = "../build/scratch/d_galleries"
run_dir = "../build/scratch"
cache_dir = "../build/cache"

# %%
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from mexp_lib import gallery, plots
from mexp_lib.experiment import load_study
from mexp_lib.extractors import build_extractor
from mexp_lib.poisoning import CraftingConfig
from mexp_lib.runner import machine_description

logging.basicConfig(level=logging.WARNING)
plots.set_style()
output_dir, run_dir = Path(output_dir), Path(run_dir)
output_dir.mkdir(parents=True, exist_ok=True)
crafting = CraftingConfig(eps=eps_255 / 255, iterations=crafting_iterations,
                          batch_size=crafting_batch_size)
machine = machine_description()

# %% [markdown]
# ## Setting
#
# One extractor g crafts the poisons of every dataset. Each dataset's splits are drawn as
# in the other notebooks. Notebook A's dataset uses exactly A's split sizes, so its
# attacker pool is A's and the stored poisoning sets match.

# %%
g = build_extractor(extractor, input_size=input_size)
splits = gallery.split_settings(
    datasets, dataset_splits, shared_dataset=dataset,
    shared_splits={"members_per_class": members_per_class,
                   "nonmembers_per_class": nonmembers_per_class,
                   "pool_per_class": pool_per_class, "pool_dataset": pool_dataset})
studies = {name: load_study(name, extractor=g, seed=seed, cache_dir=cache_dir, run_dir=run_dir,
                            data_root=data_root, **sizes)
           for name, sizes in splits.items()}
display(Markdown(
    f"Profile **{profile}**: extractor `{extractor}` at {input_size}×{input_size} px; "
    f"eps = {eps_255}/255; crafting: {crafting_iterations} Adam iterations, learning rate "
    f"{crafting.lr}, times {crafting.decay} every {crafting.decay_every} iterations when the "
    f"loss fell less than {crafting.min_improvement:.0%}; seed {seed}. Notebook A's sets: "
    f"`{dataset}`, b_poison = {b_poison}, target classes {shared_target_classes}. "
    f"Gallery sets: {poisons_per_target} poisons per target class, at least one per "
    "other class. Datasets: "
    + "; ".join(f"`{name}` ({study.num_classes} classes, attacker pool of "
                f"{len(study.splits.pool)} images of {study.splits.pool.images.shape[1]}×"
                f"{study.splits.pool.images.shape[2]} px)" for name, study in studies.items())
    + f". Machine: {machine}."
))

# %% [markdown]
# ## Poisoning sets
#
# One clean-label D_poison per dataset and target class: notebook A's set where A attacks
# that class, otherwise a gallery set. A gallery set's budget gives the same number of
# poisons of every other class (b_poison = poisons per cell × number of classes), and its
# random choices use a seed derived from the profile's seed and the target class.

# %%
poisons = {
    name: gallery.gallery_poisons(study, target_classes=range(study.num_classes),
                                  shared_target_classes=(shared_target_classes
                                                         if name == dataset else []),
                                  shared_budget=b_poison, poisons_per_target=poisons_per_target,
                                  seed=seed, crafting=crafting)
    for name, study in studies.items()
}
for name, entries in poisons.items():
    reused = sum(entry.reused for entry in entries.values())
    print(f"{name}: {reused} of {len(entries)} poisoning sets reused from {run_dir / 'poisons'}")


# %% [markdown]
# ## Galleries
#
# Rows are target classes, columns the poisons' labels (the class of the seed image each
# poison was crafted from). Every cell shows poisons chosen at random with the profile's
# seed from the D_poison of its row. The diagonal is empty because clean-label poisons
# keep their seeds' labels, which never equal the target class. Images are shown at their
# stored resolution with nearest-neighbour upscaling. Notebook A's sets draw their seed
# images with the same random seed for every target class, so their rows can repeat a
# seed image, each time perturbed towards a different base. The gallery sets use a seed
# per target class.

# %%
#| label: fig-d-gallery
#| fig-cap: "Clean-label poisons chosen at random, one grid per dataset: rows are target classes, columns the poisons' labels. Extractor, eps, crafting iterations and profile are in each grid's title."
choices = {}
for name, study in studies.items():
    sets = {t: entry.poisoning for t, entry in poisons[name].items()}
    per_cell = gallery.examples_per_cell(study.num_classes, poisons_per_target)
    choices[name] = gallery.choose_gallery(sets, class_names=study.class_names,
                                           per_cell=per_cell, seed=seed)
    figure = gallery.plot_gallery(
        choices[name], sets,
        title=f"{name}: clean-label poisons against {extractor}, eps = {eps_255}/255, "
              f"{crafting_iterations} iterations ({profile} profile)")
    dpi = gallery.gallery_dpi(choices[name], study.splits.pool.images.shape[1:3])
    with plt.rc_context({"savefig.dpi": dpi}):
        plots.save_figure(figure, output_dir, f"gallery_{name}")
    plt.show()

# %% [markdown]
# ## Seed, poison, perturbation and base
#
# For a few poisons chosen at random: the seed image (its label is the poison's label),
# the poison, the perturbation and the base image of the target class. The perturbation
# poison − seed is amplified ×8 around mid-gray, so that ±16/255 spans the full range.
# The labels give the L-infinity norm of the perturbation and the feature distance
# ||g(x) − g(base)|| of the seed (before crafting) and of the stored uint8 poison (after).

# %%
#| label: fig-d-crafting-examples
#| fig-cap: "Randomly chosen clean-label poisons with their seed image, perturbation (×8 around mid-gray) and base image; distances are Euclidean distances in the extractor's feature space. Setting in each figure's title."
for name, study in studies.items():
    sets = {t: entry.poisoning for t, entry in poisons[name].items()}
    examples = gallery.choose_examples(sets, count=crafting_examples, seed=seed)
    figure = gallery.plot_crafting_examples(
        examples, sets, study.splits.pool,
        title=f"{name}, {extractor}, eps = {eps_255}/255, "
              f"{crafting_iterations} iterations ({profile} profile)")
    image_side = max(study.splits.pool.images.shape[1:3])
    dpi = gallery.figure_dpi(image_side, gallery.EXAMPLE_CELL_INCHES)
    with plt.rc_context({"savefig.dpi": dpi}):
        plots.save_figure(figure, output_dir, f"crafting_examples_{name}")
    plt.show()

# %% [markdown]
# ## Perturbation size, feature collision and crafting time
#
# Per dataset and target class, the table gives the mean and maximum L-infinity distance
# between each stored poison and its seed in 1/255 units. That distance must not exceed
# eps, and the cell asserts it. The table also gives the share of pixel values crafting
# changed, the mean relative reduction 1 − after/before of the feature distance to the
# base, and the crafting time per poison, stored with each set when it was crafted.

# %%
#| label: tbl-d-collision
#| tbl-cap: "Clean-label poisons per dataset and target class: L-infinity perturbation (1/255 units), mean relative reduction of the feature distance to the base, and crafting seconds per poison as measured when each set was crafted."
summary = pd.concat({name: gallery.crafting_summary(poisons[name], study.splits.pool)
                     for name, study in studies.items()}, names=["dataset"])
assert (summary["max L∞ (1/255)"] <= eps_255).all(), "a poison leaves the eps ball"
# One row label per line: the dataset, with the target class as a column.
plots.show_table(summary.reset_index().set_index("dataset"), output_dir, "collision",
                 float_format=".2f")

# %%
print(f"crafting times measured on: {machine} (sets reused from an earlier run keep the "
      "time measured then)")

# %% [markdown]
# ## What this run measured

# %%
lines = []
for name, study in studies.items():
    total = summary.loc[(name, "all")]
    per_class = summary.loc[name].drop(index="all")
    reduction = per_class["mean distance reduction (%)"]
    changed = [gallery.changed_pixel_fractions(entry.poisoning, study.splits.pool)
               for entry in poisons[name].values()]
    saturated = pd.DataFrame(changed).mean()
    lines.append(
        f"- `{name}`: {total['poisons']} poisons, L∞ at most {total['max L∞ (1/255)']:.0f}/255 "
        f"(mean {total['mean L∞ (1/255)']:.1f}/255, bound {eps_255}/255), "
        f"{total['changed pixel values (%)']:.0f}% of pixel values changed: "
        f"{100 * saturated['saturated']:.0f}% of those that were 0 or 255 in the seed, "
        f"{100 * saturated['interior']:.0f}% of the others. Crafting moved the poisons' "
        f"features {total['mean distance reduction (%)']:.1f}% closer to their bases on "
        f"average (per target class from {reduction.min():.1f}% to {reduction.max():.1f}%). "
        f"Crafting took {total['crafting s/poison']:.2f} s per poison on average, as "
        "measured when each set was crafted."
    )
# A pixel x = lower + (upper − lower)(tanh w + 1)/2 moves by at most eps per unit of w, and
# Adam moves w by about lr per iteration: an estimate of the largest reachable L-infinity.
reachable_255 = min(eps_255, crafting_iterations * crafting.lr * eps_255)
display(Markdown(
    "\n".join(lines)
    + f"\n\nThe appendix crafts with 1,000 iterations; this run used {crafting_iterations}. "
      "Fewer iterations leave the poisons less converged, so their features stay farther "
      "from the bases. The perturbation may also stay below the eps bound: Adam changes the "
      "tanh variable by about the learning rate per iteration, which moves a pixel by at "
      f"most about {crafting_iterations} × {crafting.lr} × {eps_255}/255 = "
      f"{reachable_255:.1f}/255 in this run (an estimate). Pixel values at 0 or 255 start "
      "at the edge of their box, where the gradient of tanh almost vanishes, so they move "
      "less than the others. The appendix reports no distances or perturbation sizes, so "
      "only the images can be compared with its Figures 12–16."
))
