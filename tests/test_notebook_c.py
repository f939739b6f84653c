"""Notebook C executed end to end on the smoke profile."""

import json
import math

import nbformat
import pandas as pd
import pytest
import yaml

from mexp_lib.runner import REPOSITORY

FIGURES = ("learning_clean", "learning_dirty_label", "learning_clean_label", "epsilon_sweep")
TABLES = ("privacy_clean", "privacy_dirty_label", "privacy_clean_label", "epsilon_sweep")
SHARED_WITH_A = ("dataset", "pool_dataset", "input_size", "members_per_class",
                 "nonmembers_per_class", "pool_per_class", "target_classes", "b_poison",
                 "eps_255", "crafting_iterations", "crafting_batch_size", "seed")


@pytest.fixture(scope="module")
def executed(smoke_notebook):
    return smoke_notebook("c_dpsgd")


@pytest.mark.notebook
def test_writes_figures_and_tables(executed):
    build, _ = executed
    output = build / "c_dpsgd"
    for name in FIGURES:
        for suffix in ("png", "pdf"):
            assert (output / f"{name}.{suffix}").exists(), f"{name}.{suffix}"
    for name in TABLES:
        assert (output / f"{name}.csv").exists(), f"{name}.csv"
    assert (output / "run.json").exists()


@pytest.mark.notebook
def test_runs_cover_every_setting(executed):
    build, _ = executed
    runs = pd.read_csv(build / "c_dpsgd" / "runs.csv")
    main = runs[runs.noise_multiplier.isna() | (runs.noise_multiplier == 1.0)]
    sweep = runs[runs.attack == "dirty_label"]

    assert len(main) == 3 * 2 * 2  # attacks x target classes x (without, with DP-SGD)
    assert sorted(sweep.noise_multiplier.fillna(0).unique()) == [0, 0.5, 1.0, 2.0]
    private = runs[runs.private]
    assert private.epsilon.map(math.isfinite).all()
    assert (private.epsilon > 0).all()
    assert runs[~runs.private].epsilon.map(math.isinf).all()
    assert runs.mi_auc.between(0, 1).all()
    assert runs.test_accuracy.between(0, 1).all()


@pytest.mark.notebook
def test_poisoning_sets_stored_in_run(executed):
    build, _ = executed
    parameters = yaml.safe_load((REPOSITORY / "params" / "smoke" / "c_dpsgd.yaml").read_text())
    stored = set()
    for path in (build / "poisons").glob("*.json"):
        request = json.loads(path.read_text())
        # Other notebooks store sets too (e.g. with another dataset as the pool).
        if (request["pool"].startswith(f"{parameters['dataset']}/pool")
                and request["budget"] == parameters["b_poison"]):
            assert path.with_suffix(".npz").exists()
            stored.add((request["attack"], request["target_class"]))

    for attack in ("dirty_label", "clean_label"):
        for target_class in parameters["target_classes"]:
            assert (attack, target_class) in stored


@pytest.mark.notebook
def test_generated_text_states_measurements(executed):
    _, notebook_path = executed
    notebook = nbformat.read(notebook_path, as_version=4)
    texts = [output["data"]["text/markdown"] for cell in notebook.cells
             for output in cell.get("outputs", []) if "text/markdown" in output.get("data", {})]
    paragraphs = [text for text in texts if "measured in this run" in text]

    assert len(paragraphs) == 4  # three settings and the noise sweep
    assert any("chance" in text for text in paragraphs)


@pytest.mark.notebook
def test_run_record_names_profile(executed):
    build, _ = executed
    record = json.loads((build / "c_dpsgd" / "run.json").read_text())
    assert record["profile"] == "smoke"
    assert record["parameters"]["noise_multiplier"] == 1.0


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_profile_shares_poisoning_keys_with_a(profile):
    """Equal keys make notebook C load the poisoning sets notebook A stored."""
    params = REPOSITORY / "params" / profile
    notebook_c = yaml.safe_load((params / "c_dpsgd.yaml").read_text())
    notebook_a = yaml.safe_load((params / "a_lira.yaml").read_text())

    for key in SHARED_WITH_A:
        assert notebook_c[key] == notebook_a[key], key
    assert notebook_c["extractor"] in notebook_a["extractors"]


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_profile_uses_study_privacy(profile):
    params = yaml.safe_load((REPOSITORY / "params" / profile / "c_dpsgd.yaml").read_text())

    assert params["noise_multiplier"] == 1.0
    assert params["max_grad_norm"] == 1.0
    assert params["delta"] == 1e-5
    assert params["learning_rate"] == 1e-3
    assert params["batch_size"] == 100
    assert len(params["sweep_noise_multipliers"]) >= 3
