"""Notebook D executed end to end on the smoke profile."""

import json

import pandas as pd
import pytest
import yaml

from mexp_lib.runner import REPOSITORY

# Keys of notebook D's parameter files that must equal notebook A's, so that both
# notebooks read the same stored poisoning sets (D name -> A name).
SHARED_KEYS = {key: key for key in (
    "dataset", "pool_dataset", "members_per_class", "nonmembers_per_class", "pool_per_class",
    "b_poison", "eps_255", "crafting_iterations", "crafting_batch_size", "input_size", "seed")}
SHARED_KEYS["shared_target_classes"] = "target_classes"


@pytest.fixture(scope="module")
def executed(smoke_notebook):
    return smoke_notebook("d_galleries")


@pytest.mark.notebook
def test_writes_figures_and_table(executed):
    build, _ = executed
    for name in ("gallery_mnist5k.png", "gallery_mnist5k.pdf", "crafting_examples_mnist5k.png",
                 "crafting_examples_mnist5k.pdf", "collision.csv", "run.json"):
        assert (build / "d_galleries" / name).exists(), name


@pytest.mark.notebook
def test_table_covers_every_target_class(executed):
    build, _ = executed
    table = pd.read_csv(build / "d_galleries" / "collision.csv", dtype={"target class": str})
    assert list(table["target class"]) == [str(digit) for digit in range(10)] + ["all"]
    assert (table["max L∞ (1/255)"] <= 16).all()
    assert (table["poisons"].iloc[:10] >= 9).all()


@pytest.mark.notebook
def test_run_record_names_profile(executed):
    build, _ = executed
    record = json.loads((build / "d_galleries" / "run.json").read_text())
    assert record["profile"] == "smoke"
    assert record["parameters"]["poisons_per_target"] == 9


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_parameters_match_notebook_a(profile):
    own = yaml.safe_load((REPOSITORY / "params" / profile / "d_galleries.yaml").read_text())
    a_path = REPOSITORY / "params" / profile / "a_lira.yaml"
    if not a_path.exists():
        pytest.skip(f"no {a_path.name} for profile {profile}")
    notebook_a = yaml.safe_load(a_path.read_text())
    for own_key, a_key in SHARED_KEYS.items():
        assert own[own_key] == notebook_a[a_key], f"{profile}: {own_key}"
    assert own["extractor"] in notebook_a["extractors"]


def test_parameters_cell_defaults_equal_smoke():
    import jupytext

    notebook = jupytext.read(REPOSITORY / "notebooks" / "d_galleries.py")
    (cell,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    defaults: dict = {}
    exec(cell.source, {}, defaults)  # the cell contains plain assignments only
    smoke = yaml.safe_load((REPOSITORY / "params" / "smoke" / "d_galleries.yaml").read_text())
    for key, value in smoke.items():
        assert defaults[key] == value, key


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_profiles_name_known_datasets_and_extractor(profile):
    from mexp_lib import gallery
    from mexp_lib.data import DATASETS
    from mexp_lib.extractors import EXTRACTORS

    parameters = yaml.safe_load(
        (REPOSITORY / "params" / profile / "d_galleries.yaml").read_text())
    assert parameters["extractor"] in EXTRACTORS
    settings = gallery.split_settings(
        parameters["datasets"], parameters["dataset_splits"],
        shared_dataset=parameters["dataset"],
        shared_splits={key: parameters[key] for key in gallery.SPLIT_KEYS})
    assert set(settings) <= set(DATASETS)
    assert parameters["eps_255"] == 16
