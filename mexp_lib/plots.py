"""Shared figure style and writers for the notebooks.

Every figure of the study uses `set_style` and is written by `save_figure` as PNG (for
HTML) and PDF (for print) into the notebook's output folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

if TYPE_CHECKING:
    import pandas

# One color per poisoning setting, used by every notebook.
ATTACK_COLORS = {"none": "#4c72b0", "dirty_label": "#c44e52", "clean_label": "#55a868"}
ATTACK_LABELS = {"none": "no poisoning", "dirty_label": "dirty-label", "clean_label": "clean-label"}


def set_style() -> None:
    """Apply the study's seaborn theme (paper context, white grid, 150 dpi)."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 150, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "legend.frameon": False})


def save_figure(figure: plt.Figure, output_dir: str | Path, name: str) -> list[Path]:
    """Write `figure` as ``<output_dir>/<name>.png`` and ``.pdf``; return both paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / f"{name}.{suffix}" for suffix in ("png", "pdf")]
    for path in paths:
        figure.savefig(path)
    return paths


def plot_cdfs(axis: plt.Axes, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
              colors: Mapping[str, str] | None = None, xlabel: str, symlog: bool = True,
              styles: Mapping[str, str] | None = None) -> None:
    """Draw cumulative distribution curves, one per label.

    Args:
        axis: where to draw.
        curves: label -> (x grid, cumulative fraction at each grid point).
        colors: optional label -> color.
        xlabel: x-axis label, with units.
        symlog: use a symmetric-log x axis (linear within [-1, 1]).
        styles: optional label -> matplotlib line style.
    """
    for label, (grid, fraction) in curves.items():
        axis.plot(grid, fraction, label=label, color=(colors or {}).get(label),
                  linestyle=(styles or {}).get(label, "-"))
    if symlog:
        axis.set_xscale("symlog", linthresh=1.0)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("cumulative fraction")
    axis.set_ylim(0, 1)


def plot_roc(axis: plt.Axes, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
             colors: Mapping[str, str] | None = None, min_fpr: float = 1e-3) -> None:
    """Draw ROC curves on log-log axes with the chance diagonal.

    Args:
        axis: where to draw.
        curves: label -> (false positive rates, true positive rates).
        colors: optional label -> color.
        min_fpr: left limit of both axes.
    """
    for label, (fpr, tpr) in curves.items():
        axis.plot(np.maximum(fpr, min_fpr), np.maximum(tpr, min_fpr), label=label,
                  color=(colors or {}).get(label))
    diagonal = np.logspace(np.log10(min_fpr), 0, 50)
    axis.plot(diagonal, diagonal, color="gray", linestyle=":", linewidth=1, label="chance")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(min_fpr, 1)
    axis.set_ylim(min_fpr, 1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")


def mean_std_table_cell(values: Sequence[float], *, percent: bool = False, digits: int = 3) -> str:
    """Format values as 'mean ± std' (std over target classes, ddof=0), NaN values ignored."""
    values = np.asarray(values, dtype=float) * (100 if percent else 1)
    suffix = "%" if percent else ""
    if np.isnan(values).all():
        return "n/a"  # e.g. a TPR at an FPR below what the number of non-members resolves
    return f"{np.nanmean(values):.{digits}f}±{np.nanstd(values):.{digits}f}{suffix}"


def show_table(table: "pandas.DataFrame", output_dir: str | Path, name: str, *,
               float_format: str = ".3f") -> None:
    """Write `table` as ``<output_dir>/<name>.csv`` and display it as a Markdown table.

    Markdown output renders in Jupyter, in nbconvert HTML and in Quarto's HTML and PDF
    (Typst) outputs alike. Nothing is returned, so the cell's only output is the table.
    """
    from IPython.display import Markdown, display

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{name}.csv"
    table.to_csv(path)
    display(Markdown(table.to_markdown(floatfmt=float_format)))
