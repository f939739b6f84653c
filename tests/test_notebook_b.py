"""Notebook B executed end to end on the smoke profile."""

import json

import pandas as pd
import pytest

from mexp_lib.runner import read_parameters



@pytest.fixture(scope="module")
def executed(smoke_notebook):
    return smoke_notebook("b_heuristic")


@pytest.mark.notebook
def test_writes_tables_and_figures(executed):
    build, _ = executed
    for name in ("h_extractors.csv", "h_shadow.csv", "finetune.csv", "run.json"):
        assert (build / "b_heuristic" / name).exists(), name
    for figure in ("cdf_extractors", "cdf_shadow", "cdf_finetune"):
        for suffix in ("png", "pdf"):
            assert (build / "b_heuristic" / f"{figure}.{suffix}").exists(), f"{figure}.{suffix}"


@pytest.mark.notebook
def test_extractor_table_has_every_curve(executed):
    build, _ = executed
    parameters = read_parameters("smoke", "b_heuristic")
    table = pd.read_csv(build / "b_heuristic" / "h_extractors.csv", index_col="curve")
    expected = len(parameters["extractors"]) + 1 + (parameters["untrained_reference"] is not None)
    assert len(table) == expected
    for name in parameters["extractors"]:
        assert name in table.index
    members = parameters["members_per_class"] * len(parameters["target_classes"])
    assert (table["members"] == members).all()
    assert table["fraction h < 0"].between(0, 1).all()
    assert (table["p10 h"] <= table["median h"]).all()


@pytest.mark.notebook
def test_shadow_table_covers_spaces_and_classes(executed):
    build, _ = executed
    parameters = read_parameters("smoke", "b_heuristic")
    table = pd.read_csv(build / "b_heuristic" / "h_shadow.csv")
    # Two spaces x panel classes x three training sets.
    assert len(table) == 2 * len(parameters["shadow_target_classes"]) * 3
    assert set(table["space"]) == {"feature space", "input space"}


@pytest.mark.notebook
def test_finetune_table_rows(executed):
    build, _ = executed
    table = pd.read_csv(build / "b_heuristic" / "finetune.csv", index_col="attack")
    assert list(table.index) == ["no poisoning", "dirty-label", "clean-label"]
    assert table["Mentr AUC"].between(0, 1).all()
    assert table["test accuracy"].between(0, 1).all()
    assert (table["weight change"] > 0).all()


@pytest.mark.notebook
def test_run_record_names_profile(executed):
    build, _ = executed
    record = json.loads((build / "b_heuristic" / "run.json").read_text())
    assert record["profile"] == "smoke"
    assert record["parameters"]["finetune_lr"] == pytest.approx(1e-5)
