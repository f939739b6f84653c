"""Every notebook's labelled figure and table cells show their output on the smoke profile.

The report embeds these cells by label, so each must exist and carry the right kind of
output: a PNG for figures, a Markdown table for tables.
"""

import pytest

from mexp_lib.report import labelled_cells
from mexp_lib.runner import NOTEBOOKS

EXPECTED_LABELS = {
    "a_lira": {"tbl-a-table6", "tbl-a-attacks", "fig-a-roc", "fig-a-scores"},
    "b_heuristic": {"fig-b-cdf-extractors", "tbl-b-h-extractors", "fig-b-cdf-shadow",
                    "tbl-b-h-shadow", "fig-b-cdf-finetune", "tbl-b-finetune"},
    "c_dpsgd": {"fig-c-learning-clean", "fig-c-learning-dirty-label",
                "fig-c-learning-clean-label", "fig-c-epsilon-sweep", "tbl-c-privacy-clean",
                "tbl-c-privacy-dirty-label", "tbl-c-privacy-clean-label",
                "tbl-c-epsilon-sweep"},
    "d_galleries": {"fig-d-gallery", "fig-d-crafting-examples", "tbl-d-collision"},
}


def test_every_notebook_listed():
    assert set(EXPECTED_LABELS) == set(NOTEBOOKS)


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_labelled_cells_show_output(notebook, smoke_notebook):
    _, executed = smoke_notebook(notebook)
    cells = labelled_cells(executed)
    assert set(cells) == EXPECTED_LABELS[notebook]
    for label, cell in cells.items():
        kinds = {kind for output in cell.outputs for kind in output.get("data", {})}
        expected = "image/png" if label.startswith("fig-") else "text/markdown"
        assert expected in kinds, f"{label} shows no {expected}"
