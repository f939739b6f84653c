"""Notebook A executed end to end on the smoke profile."""

import json

import pandas as pd
import pytest



@pytest.fixture(scope="module")
def executed(smoke_notebook):
    return smoke_notebook("a_lira")


@pytest.mark.notebook
def test_writes_tables_and_figures(executed):
    build, _ = executed
    for name in ("table6.csv", "attacks.csv", "lira_per_class.csv", "roc.png", "roc.pdf",
                 "scores.png", "run.json"):
        assert (build / "a_lira" / name).exists(), name


@pytest.mark.notebook
def test_per_class_results_cover_grid(executed):
    build, _ = executed
    results = pd.read_csv(build / "a_lira" / "lira_per_class.csv")
    assert len(results) == 2 * 3  # two target classes, three poisoning settings
    assert results.lira_online_auc.between(0, 1).all()
    assert results.test_accuracy.between(0, 1).all()


@pytest.mark.notebook
def test_run_record_names_profile(executed):
    build, _ = executed
    record = json.loads((build / "a_lira" / "run.json").read_text())
    assert record["profile"] == "smoke"
    assert record["parameters"]["n_shadow"] == 8
