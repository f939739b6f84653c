"""Tests of the papermill runner on a tiny notebook written by the tests."""

import json

import pytest

from mexp_lib import runner

NOTEBOOK = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
profile = "test"
output_dir = "."
run_dir = "."
cache_dir = "."
fail = False

# %%
from pathlib import Path

Path(output_dir, "result.txt").write_text("done")
assert not fail, "asked to fail"
'''


@pytest.fixture
def project(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "tiny.py").write_text(NOTEBOOK)
    (tmp_path / "params" / "test").mkdir(parents=True)
    (tmp_path / "params" / "test" / "tiny.yaml").write_text("fail: false\n")
    return tmp_path


def test_run_writes_record(project):
    executed = runner.run_notebook("tiny", profile="test", root=project)
    record = json.loads((project / "build" / "test" / "tiny" / "run.json").read_text())
    assert executed.exists()
    assert record["parameters"]["fail"] is False
    assert (project / "build" / "test" / "tiny" / "result.txt").read_text() == "done"


def test_unknown_parameter_rejected(project):
    with pytest.raises(ValueError, match="no parameter 'n_shadows'"):
        runner.run_notebook("tiny", profile="test", root=project, overrides={"n_shadows": 4})
    assert not (project / "build" / "test" / "tiny").exists()


def test_failed_rerun_removes_record(project):
    runner.run_notebook("tiny", profile="test", root=project)
    record = project / "build" / "test" / "tiny" / "run.json"
    assert record.exists()
    with pytest.raises(runner.NotebookFailed, match="tiny .profile test. failed in cell"):
        runner.run_notebook("tiny", profile="test", root=project, overrides={"fail": True})
    assert not record.exists()
    assert (project / "build" / "test" / "tiny.ipynb").exists()  # kept for inspection


def test_unknown_profile_names_known_ones(project):
    with pytest.raises(FileNotFoundError, match="known profiles: test"):
        runner.run_notebook("tiny", profile="absent", root=project)
    assert not (project / "build" / "absent").exists()


def test_malformed_override_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit):
        runner.main(["a_lira", "-p", "target_classes", "[1,"])
    assert "not valid YAML" in capsys.readouterr().err
