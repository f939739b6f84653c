"""Every notebook's .py source and .ipynb twin hold the same cells, with one parameters cell."""

from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.py"))


def _cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks/*.py found"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda path: path.stem)
def test_pair_in_sync(source):
    twin = source.with_suffix(".ipynb")
    assert twin.exists(), f"{twin.name} is missing; run `make sync`"
    assert _cells(jupytext.read(source)) == _cells(jupytext.read(twin)), (
        f"{source.name} and {twin.name} differ; run `make sync`")


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda path: path.stem)
def test_one_parameters_cell(source):
    tagged = [cell for cell in jupytext.read(source).cells
              if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
