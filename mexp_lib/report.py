"""Build the study's report from the executed notebooks of one profile.

    python -m mexp_lib.report --profile quick

The Quarto project in ``report/`` embeds figures and tables of the executed notebooks by
cell label, e.g. ``{{< embed results/a_lira.ipynb#fig-a-roc >}}``. Quarto links embedded
notebooks correctly only when they lie inside the project, so the profile is chosen by
staging: `stage_results` copies ``build/<profile>/<notebook>.ipynb`` and the notebook's
small outputs into ``report/results/``, and writes ``report/_variables.yml`` (profile,
datasets, extractors, scale, machine, commit, read from each notebook's ``run.json``) plus
two generated Markdown files that the sources include. The same sources therefore render
any profile. With ``quarto`` on PATH, the project is rendered (HTML and Typst PDF) into
``build/<profile>/report/``.

Whether or not Quarto is installed, `build_html_report` writes a browsable fallback into
``build/<profile>/report-html/``: an index page plus each executed notebook converted by
nbconvert, with code hidden, stderr logs dropped, captions shown and images embedded.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import yaml
from nbconvert import HTMLExporter
from nbconvert.preprocessors import Preprocessor

from .runner import NOTEBOOKS, REPOSITORY

log = logging.getLogger(__name__)

REPORT_SOURCES = REPOSITORY / "report"
# Folder of the Quarto project that receives the staged build of one profile.
STAGING_FOLDER = "results"
# Output files of a notebook that are copied into the staging folder. The large stored
# artifacts (.npz arrays, poisoning sets) stay in build/.
STAGED_SUFFIXES = (".png", ".pdf", ".csv", ".json", ".md")

NOTEBOOK_TITLES = {
    "a_lira": "A. Membership exposure under a stronger attack (LiRA)",
    "b_heuristic": "B. The heuristic h: why some samples are exposed",
    "c_dpsgd": "C. DP-SGD as a defense",
    "d_galleries": "D. Clean-label poison galleries",
}

# Table 6 of the appendix: CIFAR-10, b_poison = 1,000, online LiRA with 128 shadow models.
# Means over the ten target classes as (MI AUC, TPR at FPR = 1% in percent, test accuracy).
APPENDIX_TABLE6 = {
    "Xception": {"none": (0.614, 0.38, 0.768), "dirty_label": (0.675, 0.41, 0.735),
                 "clean_label": (0.677, 0.34, 0.738)},
    "InceptionV3": {"none": (0.712, 0.71, 0.677), "dirty_label": (0.799, 0.94, 0.648),
                    "clean_label": (0.756, 0.93, 0.663)},
    "VGG16": {"none": (0.610, 0.71, 0.815), "dirty_label": (0.707, 0.64, 0.779),
              "clean_label": (0.710, 0.70, 0.783)},
    "ResNet50": {"none": (0.583, 0.56, 0.848), "dirty_label": (0.694, 0.35, 0.832),
                 "clean_label": (0.679, 0.35, 0.838)},
    "MobileNetV2": {"none": (0.592, 0.34, 0.842), "dirty_label": (0.674, 0.23, 0.813),
                    "clean_label": (0.659, 0.24, 0.820)},
}
POISONING_ATTACKS = ("dirty_label", "clean_label")
# Per-class results of notebook A, relative to build/<profile>/.
LIRA_PER_CLASS = Path("a_lira") / "lira_per_class.csv"

QUARTO_INSTALL_HINT = (
    "Install Quarto 1.4 or later (it bundles Pandoc and Typst): download the installer "
    "from https://quarto.org/docs/get-started/ (on Debian or Ubuntu: "
    "sudo dpkg -i quarto-<version>-linux-amd64.deb), then run `make report` again. "
    "The PyPI package quarto-cli is a source distribution that downloads the same "
    "binary from GitHub while it installs, so it fails without internet access."
)


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Reference:
    """A file that a Quarto source embeds, includes or shows as an image.

    Attributes:
        source: the .qmd file that contains the reference.
        line: 1-based line number in `source`.
        kind: "embed", "include" or "image".
        path: the path as written, relative to the folder of `source`.
        label: the cell label after '#', for embeds; otherwise None.
    """

    source: Path
    line: int
    kind: str
    path: str
    label: str | None = None

    @property
    def target(self) -> Path:
        return self.source.parent / self.path

    def __str__(self) -> str:
        address = f"{self.path}#{self.label}" if self.label else self.path
        return f"{self.source}:{self.line}: {self.kind} {address}"


EMBED = re.compile(r"\{\{<\s*embed\s+(?P<path>[^\s#>]+)#(?P<label>[^\s>]+)[^>]*>\}\}")
INCLUDE = re.compile(r"\{\{<\s*include\s+(?P<path>[^\s>]+)\s*>\}\}")
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]+)")
CELL_OPTION = re.compile(r"^#\|\s*(?P<key>[\w-]+)\s*:\s*(?P<value>.*)$")


def find_references(source: Path) -> list[Reference]:
    """List the embeds, includes and local images of one Quarto source, in file order.

    Lines inside fenced code blocks are skipped, and so are web images (http, https, data).
    """
    references = []
    in_code_block = False
    for number, line in enumerate(Path(source).read_text().splitlines(), start=1):
        if line.lstrip().startswith(("```", "~~~")):
            in_code_block = not in_code_block
            continue
        if in_code_block:
            continue
        for match in EMBED.finditer(line):
            references.append(Reference(Path(source), number, "embed", match["path"],
                                        match["label"]))
        for match in INCLUDE.finditer(line):
            references.append(Reference(Path(source), number, "include", match["path"]))
        for match in IMAGE.finditer(line):
            if not match["path"].startswith(("http:", "https:", "data:")):
                references.append(Reference(Path(source), number, "image", match["path"]))
    return references


def quarto_sources(report_dir: Path) -> list[Path]:
    """List the .qmd files of the Quarto project, leaving out staged and rendered output."""
    skipped = {STAGING_FOLDER, "_output", ".quarto", "_freeze"}
    return sorted(path for path in Path(report_dir).rglob("*.qmd")
                  if not skipped.intersection(path.relative_to(report_dir).parts))


def cell_options(cell: Mapping) -> dict[str, object]:
    """Read the Quarto options (leading ``#| key: value`` lines) of a code cell."""
    options: dict[str, object] = {}
    if cell.get("cell_type") != "code":
        return options
    for line in cell.get("source", "").splitlines():
        match = CELL_OPTION.match(line.strip())
        if not match:
            break
        options[match["key"]] = yaml.safe_load(match["value"])
    return options


def labelled_cells(notebook: Path) -> dict[str, dict]:
    """Map each cell label of a notebook to its cell (nbformat node)."""
    cells = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        label = cell_options(cell).get("label")
        if label:
            cells[str(label)] = cell
    return cells


def check_references(report_dir: Path = REPORT_SOURCES) -> list[str]:
    """Check every embed, include and image of the Quarto sources against the files.

    An embed must name an existing notebook that has a code cell with that label, and the
    cell must have outputs (an executed notebook). Includes and images must exist. Run it
    after `stage_results`, because most references point into the staging folder.

    Returns:
        One message per problem, empty when everything resolves.
    """
    problems = []
    notebooks: dict[Path, dict[str, dict]] = {}
    for source in quarto_sources(Path(report_dir)):
        for reference in find_references(source):
            target = reference.target
            if not target.exists():
                problems.append(f"{reference}: file {target} not found")
                continue
            if reference.kind != "embed":
                continue
            if target not in notebooks:
                notebooks[target] = labelled_cells(target)
            cell = notebooks[target].get(reference.label)
            if cell is None:
                known = ", ".join(sorted(notebooks[target])) or "none"
                problems.append(f"{reference}: no cell labelled {reference.label} in {target} "
                                f"(labels there: {known})")
            elif not cell.get("outputs"):
                problems.append(f"{reference}: cell {reference.label} of {target} has no "
                                "outputs; execute the notebook first")
    return problems


FIGURE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
TABLE_TYPES = ("text/markdown", "text/html")


def stray_outputs(report_dir: Path = REPORT_SOURCES) -> list[str]:
    """List embedded cells whose outputs are not only the figure or table they are for.

    Quarto embeds every output of a cell, so a return value (``PosixPath(...)``), a print
    or a warning on stderr ends up inside the figure or table of the report. A ``fig-``
    cell may contain only image outputs and a ``tbl-`` cell only Markdown or HTML ones, and
    each needs at least one. Embeds that `check_references` rejects are skipped.
    """
    messages = []
    for source in quarto_sources(Path(report_dir)):
        for reference in find_references(source):
            if reference.kind != "embed" or not reference.target.exists():
                continue
            cell = labelled_cells(reference.target).get(reference.label)
            if cell is None:
                continue
            expected = FIGURE_TYPES if reference.label.startswith("fig-") else TABLE_TYPES
            matching = [output for output in cell.get("outputs", [])
                        if set(output.get("data", {})) & set(expected)]
            others = [_describe_output(output) for output in cell.get("outputs", [])
                      if not set(output.get("data", {})) & set(expected)]
            if not matching:
                messages.append(f"{reference}: the cell has no {' or '.join(expected)} output")
            if others:
                messages.append(f"{reference}: the cell also outputs {'; '.join(others)}")
    return messages


def _describe_output(output: Mapping) -> str:
    if output.get("output_type") == "stream":
        first_line = output.get("text", "").strip().splitlines()[:1]
        return f"{output.get('name')} text {first_line[0][:80] if first_line else ''!r}"
    text = str(output.get("data", {}).get("text/plain", ""))[:80]
    return f"{output.get('output_type')} {text!r}"


# --------------------------------------------------------------------------- run records


def read_run_records(build_dir: Path, notebooks: Iterable[str] = NOTEBOOKS) -> dict[str, dict]:
    """Load ``<build_dir>/<notebook>/run.json`` of every notebook whose last run finished.

    The runner writes run.json after the executed notebook, and only when every cell ran.
    So a notebook counts as finished when its run.json exists and is not older than
    ``<build_dir>/<notebook>.ipynb``. A newer .ipynb is left by a later run that failed;
    such a notebook is skipped with a warning.
    """
    records = {}
    for notebook in notebooks:
        path = Path(build_dir) / notebook / "run.json"
        executed = Path(build_dir) / f"{notebook}.ipynb"
        if not (path.exists() and executed.exists()):
            continue
        if executed.stat().st_mtime > path.stat().st_mtime:
            log.warning("%s is newer than %s: its last run failed, so the report leaves it out",
                        executed, path)
            continue
        records[notebook] = json.loads(path.read_text())
    return records


def _distinct(values: Iterable[object]) -> list[str]:
    """Return the distinct non-empty values as strings, in first-seen order."""
    seen: dict[str, None] = {}
    for value in values:
        if value is None or value == "" or value == []:
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            seen.setdefault(str(item), None)
    return list(seen)


def _as_text(value: object) -> str | None:
    """Write a parameter value for prose: lists as comma-separated items."""
    if value is None:
        return None
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _parameter_values(records: Mapping[str, dict], *names: str) -> list[str]:
    return _distinct(record.get("parameters", {}).get(name)
                     for record in records.values() for name in names)


def describe_scale(records: Mapping[str, dict]) -> str:
    """Summarise the sizes that set the scale of a run, one clause per parameter.

    A parameter with different values across notebooks lists them all, separated by '/'.
    """
    clauses = []
    for name, text in (("members_per_class", "{} members per class"),
                       ("nonmembers_per_class", "{} non-members per class"),
                       ("pool_per_class", "{} attacker-pool images per class"),
                       ("b_poison", "b_poison = {}"),
                       ("n_shadow", "{} shadow models"),
                       ("epochs", "{} epochs"),
                       ("input_size", "{} px inputs")):
        values = _parameter_values(records, name)
        if values:
            clauses.append(text.format(" / ".join(values)))
    targets = _distinct(_as_text(record.get("parameters", {}).get("target_classes"))
                        for record in records.values())
    if targets:
        clauses.append(f"target classes {' / '.join(targets)}")
    return "; ".join(clauses) if clauses else "unknown (no run.json found)"


# Notebook parameters that name a dataset: the members' dataset, attacker pools, galleries.
DATASET_PARAMETERS = ("dataset", "pool_dataset", "other_pool_dataset", "datasets")


def run_variables(profile: str, records: Mapping[str, dict]) -> dict[str, object]:
    """Collect the facts of a run that the Quarto sources show through ``{{< var run.* >}}``."""
    unknown = "unknown (no run.json found)"
    finished = sorted(record["finished"] for record in records.values() if "finished" in record)
    missing = [notebook for notebook in NOTEBOOKS if notebook not in records]
    return {"run": {
        "profile": profile,
        "datasets": ", ".join(_parameter_values(records, *DATASET_PARAMETERS)) or unknown,
        "extractors": ", ".join(_parameter_values(records, "extractors", "extractor")) or unknown,
        "scale": describe_scale(records),
        "machine": "; ".join(_distinct(r.get("machine") for r in records.values())) or unknown,
        "commit": ", ".join(_distinct(r.get("commit") for r in records.values())) or unknown,
        "finished": finished[-1] if finished else unknown,
        "notebooks": ", ".join(records) or "none",
        "missing": ", ".join(missing) or "none",
    }}


def run_summary_table(records: Mapping[str, dict]) -> pd.DataFrame:
    """Tabulate one row per executed notebook: when it finished, wall time, machine, commit."""
    rows = {}
    for notebook, record in records.items():
        rows[notebook] = {
            "finished (UTC)": record.get("finished", ""),
            "wall time (s)": record.get("wall_seconds", float("nan")),
            "machine": record.get("machine", ""),
            "commit": record.get("commit", ""),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- Table 6


def table6_comparison(per_class: pd.DataFrame, *, dataset: str) -> pd.DataFrame:
    """Compare the change of LiRA AUC and accuracy under poisoning with the appendix.

    Args:
        per_class: notebook A's per-class results, with columns extractor, attack,
            lira_online_auc and test_accuracy (one row per extractor, attack, target class).
        dataset: the run's dataset name, shown next to its extractors.

    Returns:
        One row per extractor of this run and of the appendix. Columns: MI AUC without
        poisoning, the AUC change under each attack, accuracy without poisoning and its
        change under each attack; means over target classes.
    """
    means = per_class.groupby(["extractor", "attack"], sort=False)[
        ["lira_online_auc", "test_accuracy"]].mean()
    rows = {}
    for extractor in per_class["extractor"].unique():
        auc = means["lira_online_auc"][extractor]
        accuracy = means["test_accuracy"][extractor]
        rows[f"this run: {extractor} ({dataset})"] = _comparison_row(
            {attack: (auc.get(attack, np.nan), accuracy.get(attack, np.nan))
             for attack in ("none", *POISONING_ATTACKS)})
    for extractor, settings in APPENDIX_TABLE6.items():
        rows[f"appendix: {extractor} (CIFAR-10)"] = _comparison_row(
            {attack: (values[0], values[2]) for attack, values in settings.items()})
    return pd.DataFrame.from_dict(rows, orient="index")


def _comparison_row(values: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    (auc_none, accuracy_none) = values["none"]
    row = {"MI AUC, no poisoning": auc_none}
    for attack in POISONING_ATTACKS:
        row[f"Δ AUC, {attack.replace('_', '-')}"] = values[attack][0] - auc_none
    row["test acc., no poisoning"] = accuracy_none
    for attack in POISONING_ATTACKS:
        row[f"Δ acc., {attack.replace('_', '-')}"] = values[attack][1] - accuracy_none
    return row


def format_comparison(comparison: pd.DataFrame) -> pd.DataFrame:
    """Format the comparison as text: values with 3 decimals, changes with their sign."""
    formatted = comparison.copy().astype(object)
    for column in comparison.columns:
        pattern = "{:+.3f}" if column.startswith("Δ") else "{:.3f}"
        formatted[column] = [pattern.format(value) for value in comparison[column]]
    return formatted


def describe_table6_comparison(comparison: pd.DataFrame) -> str:
    """State, from the numbers, in how many cases poisoning raised the AUC in each source."""
    sentences = []
    for prefix, source in (("this run", "In this run"), ("appendix", "In the appendix")):
        part = comparison[comparison.index.str.startswith(prefix)]
        changes = part[[f"Δ AUC, {attack.replace('_', '-')}" for attack in POISONING_ATTACKS]]
        raised = int((changes > 0).sum().sum())
        sentences.append(
            f"{source}, poisoning raised the mean MI AUC in {raised} of {changes.size} "
            f"extractor-attack pairs (AUC change from {np.nanmin(changes.values):+.3f} to "
            f"{np.nanmax(changes.values):+.3f})."
        )
    return " ".join(sentences)


def table6_comparison_markdown(build_dir: Path, records: Mapping[str, dict]) -> str:
    """Write the Table 6 comparison as Markdown with a Quarto table caption and label."""
    path = Path(build_dir) / LIRA_PER_CLASS
    if not path.exists():
        return (f"Notebook A's per-class results ({LIRA_PER_CLASS}) are missing from this "
                "build, so the comparison with the appendix's Table 6 is not available.\n")
    dataset = ", ".join(_parameter_values({"a": records.get("a_lira", {})}, "dataset")) or "?"
    comparison = table6_comparison(pd.read_csv(path), dataset=dataset)
    return (format_comparison(comparison).to_markdown() + "\n\n"
            + ": Mean online-LiRA MI AUC and test accuracy without poisoning, and their "
              "change under each attack, in this run and in the appendix's Table 6 "
              "(CIFAR-10, b_poison = 1,000, 128 shadow models). {#tbl-table6-comparison}\n\n"
            + describe_table6_comparison(comparison) + "\n")


# --------------------------------------------------------------------------- staging


def stage_results(build_dir: Path, profile: str, *,
                  report_dir: Path = REPORT_SOURCES) -> dict[str, dict]:
    """Copy one profile's executed notebooks into the Quarto project and write its variables.

    Replaces ``<report_dir>/results/`` with the executed notebooks and the small outputs
    (figures, tables, run.json) of ``build_dir``, and writes ``_variables.yml``,
    ``results/run-summary.md`` and ``results/table6-comparison.md``. Notebooks that have
    no executed copy in `build_dir` are skipped with a warning.

    Returns:
        The run records (contents of run.json) by notebook.
    """
    build_dir, report_dir = Path(build_dir), Path(report_dir)
    staged = report_dir / STAGING_FOLDER
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    records = read_run_records(build_dir)
    for notebook in NOTEBOOKS:
        if notebook not in records:
            log.warning("no finished run of %s in %s; its part of the report will be missing",
                        notebook, build_dir)
            continue
        shutil.copy2(build_dir / f"{notebook}.ipynb", staged / f"{notebook}.ipynb")
        shutil.copytree(build_dir / notebook, staged / notebook, ignore=_ignore_large_artifacts)

    variables = run_variables(profile, records)
    (report_dir / "_variables.yml").write_text(
        "# Written by `python -m mexp_lib.report`; do not edit.\n"
        + yaml.safe_dump(variables, sort_keys=False, allow_unicode=True))
    summary = run_summary_table(records)
    if len(summary):
        summary_text = (summary.to_markdown(floatfmt=".0f")
                        + "\n\n: Notebooks of this run. {#tbl-run-summary}\n")
    else:
        summary_text = f"No notebook has finished in {build_dir}.\n"
    (staged / "run-summary.md").write_text(summary_text)
    (staged / "table6-comparison.md").write_text(table6_comparison_markdown(build_dir, records))
    return records


def _ignore_large_artifacts(folder: str, names: list[str]) -> list[str]:
    return [name for name in names
            if not (Path(folder) / name).is_dir() and not name.endswith(STAGED_SUFFIXES)]


def render_quarto(quarto: str, report_dir: Path, destination: Path) -> Path:
    """Render the Quarto project (HTML and Typst PDF) and copy its output to `destination`.

    Raises:
        subprocess.CalledProcessError: quarto failed; its messages are on stderr.
    """
    subprocess.run([quarto, "render", str(report_dir)], check=True)
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(Path(report_dir) / "_output", destination)
    return destination


# --------------------------------------------------------------------------- fallback HTML


class ReportPreprocessor(Preprocessor):
    """Prepare an executed notebook for reading: drop stderr, show labelled cells' captions.

    stderr carries progress bars and log lines. A figure or table cell's caption lives in
    its ``#| fig-cap`` / ``#| tbl-cap`` option, which is hidden with the code, so it is
    added after the cell's outputs as an HTML paragraph whose id is the cell label.
    """

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        cell.outputs = [output for output in cell.outputs
                        if not (output.output_type == "stream" and output.name == "stderr")]
        options = cell_options(cell)
        label = options.get("label")
        caption = options.get("fig-cap") or options.get("tbl-cap")
        if label and caption and cell.outputs:
            kind = "Table" if str(label).startswith("tbl-") else "Figure"
            paragraph = (f'<p class="caption" id="{html.escape(str(label))}" '
                         f'data-alt="{html.escape(str(caption))}"><strong>{kind} '
                         f'<code>{html.escape(str(label))}</code>.</strong> '
                         f"{html.escape(str(caption))}</p>")
            cell.outputs.append(nbformat.v4.new_output(
                "display_data", data={"text/html": paragraph}))
        return cell, resources


CAPTION_CSS = """
<style>
  .jp-Notebook { max-width: 1100px; margin: 0 auto; }
  p.caption { font-size: 0.92em; color: #333; margin: 0.3em 0 1.6em; }
  .jp-RenderedMarkdown table { border-collapse: collapse; font-size: 0.9em; }
  .jp-RenderedMarkdown th, .jp-RenderedMarkdown td { padding: 0.25em 0.6em; }
  nav.report-back { max-width: 1100px; margin: 0.8em auto; font-family: sans-serif; }
</style>
"""


class _SkipMissingAltWarning(logging.Filter):
    """Drop nbconvert's warning about images without alt text; `_caption_images` sets it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Alternative text is missing" not in record.getMessage()


def _caption_images(page: str) -> str:
    """Use each figure cell's caption as the alternative text of its images."""
    from bs4 import BeautifulSoup  # a dependency of nbconvert

    soup = BeautifulSoup(page, features="html.parser")
    for caption in soup.select("p.caption"):
        cell = caption.find_parent(class_="jp-Cell")
        for image in cell.select("img") if cell else []:
            image["alt"] = caption["data-alt"]
    return str(soup)


def convert_notebook(executed: Path, destination: Path) -> Path:
    """Convert an executed notebook to standalone HTML: outputs only, images embedded."""
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    exporter.log = logging.getLogger(f"{__name__}.nbconvert")
    exporter.log.addFilter(_SkipMissingAltWarning())
    exporter.register_preprocessor(ReportPreprocessor(), enabled=True)
    notebook = nbformat.read(executed, as_version=4)
    page, _ = exporter.from_notebook_node(notebook)
    page = _caption_images(page)
    back = '<nav class="report-back"><a href="index.html">← report index</a></nav>'
    page = page.replace("</head>", CAPTION_CSS + "</head>", 1)
    page = re.sub(r"(<body[^>]*>)", lambda match: match[1] + back, page, count=1)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(page)
    return destination


INDEX_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.5;
       color: #1d1d1f; max-width: 60rem; margin: 2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.subtitle { color: #555; margin-top: 0; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6rem 1rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.8rem 0; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 0.3rem 0.7rem; text-align: left;
         vertical-align: top; }
th { background: #f5f5f7; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 0.9em; background: #f3f3f3; padding: 0 0.2em; border-radius: 3px; }
ul.notebooks li { margin: 0.35rem 0; }
.formula { font-family: "STIX Two Math", "Cambria Math", serif; margin: 0.3rem 0 0.3rem 1.5rem; }
"""

# Short form of the setup section of the Quarto report (report/_setup.qmd) for readers of
# the fallback report. Formulas are plain HTML, so the page needs no MathJax download.
SETUP_HTML = """
<p>A frozen ImageNet-pretrained feature extractor <i>g</i> feeds a trainable head
(Linear(d, 128) → tanh → Linear(128, C)). The victim trains the head on
D<sub>train</sub> = D<sub>clean</sub> ∪ D<sub>poison</sub>. The attacker controls only
D<sub>poison</sub>, built from its own pool D<sub>shadow</sub>, and wants to raise the
membership exposure of one target class <i>t</i>: target-class members of
D<sub>clean</sub> against target-class non-members of D<sub>test</sub>.</p>
<ul>
<li><b>Dirty-label poisoning:</b> target-class pool images relabelled at random to other
classes.</li>
<li><b>Clean-label poisoning (feature collision):</b> pool images of other classes with
their true labels, perturbed within ‖δ‖<sub>∞</sub> ≤ ε to minimise
‖g(x + δ) − g(x<sub>base</sub>)‖², where x<sub>base</sub> is a target-class pool
image.</li>
<li>Both spend b<sub>poison</sub> − b<sub>poison</sub>/C images on poisons and
b<sub>poison</sub>/C on correctly labelled target-class images.</li>
</ul>
<p><b>Mentr</b> (Song and Mittal, 2021), lower means member:</p>
<p class="formula">Mentr(p, y) = −(1 − p<sub>y</sub>) log p<sub>y</sub>
 − Σ<sub>i≠y</sub> p<sub>i</sub> log(1 − p<sub>i</sub>)</p>
<p><b>LiRA</b> (Carlini et al., 2022) on the logit-scaled confidence
φ = log p<sub>y</sub> − log Σ<sub>i≠y</sub> p<sub>i</sub>: online LiRA scores
log N(φ; μ<sub>in</sub>, σ<sub>in</sub>²) − log N(φ; μ<sub>out</sub>, σ<sub>out</sub>²)
with per-example Gaussians fitted to the shadow models that did (IN) and did not (OUT)
train on the example; offline LiRA uses the OUT Gaussian only.</p>
<p><b>Heuristic h</b>, lower means more exposed:</p>
<p class="formula">h(x) = (d<sub>out</sub>(x) − d<sub>in</sub>(x)) /
min(d<sub>out</sub>(x), d<sub>in</sub>(x))</p>
<p>where d<sub>in</sub> is the distance to the nearest other training sample of the same
label and d<sub>out</sub> the distance to the nearest training sample of another label.
Metrics: ROC AUC of members against non-members, TPR at FPR = 1%, and test accuracy;
means and standard deviations are over target classes.</p>
"""

NOTEBOOK_SUMMARIES = {
    "a_lira": "LiRA with shadow models: the appendix's Table 6 analog, ROC curves, scores.",
    "b_heuristic": "CDFs of h across extractors, attacker pools and fine-tuned models.",
    "c_dpsgd": "Training curves on normal and poisoning samples with and without DP-SGD.",
    "d_galleries": "Randomly chosen clean-label poisons per target class and label.",
}


def _html_table(table: pd.DataFrame) -> str:
    """Render a table of preformatted numbers, right-aligned."""
    rows = ["<table>", "<tr><th></th>" + "".join(
        f"<th>{html.escape(str(column))}</th>" for column in table.columns) + "</tr>"]
    for index, row in table.iterrows():
        cells = "".join(f'<td class="number">{html.escape(str(value))}</td>' for value in row)
        rows.append(f"<tr><th>{html.escape(str(index))}</th>{cells}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def write_index(output_dir: Path, *, profile: str, records: Mapping[str, dict],
                pages: Mapping[str, Path], comparison: pd.DataFrame | None) -> Path:
    """Write the fallback report's index page: the run, the notebooks, the setup, Table 6."""
    variables = run_variables(profile, records)["run"]
    facts = [("profile", profile), ("datasets", variables["datasets"]),
             ("extractors", variables["extractors"]), ("scale", variables["scale"]),
             ("machine", variables["machine"]), ("commit", variables["commit"]),
             ("last notebook finished (UTC)", variables["finished"])]
    facts_html = "<table>" + "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"
        for name, value in facts) + "</table>"

    items = []
    for notebook in NOTEBOOKS:
        title = html.escape(NOTEBOOK_TITLES[notebook])
        summary = html.escape(NOTEBOOK_SUMMARIES[notebook])
        if notebook in pages:
            record = records.get(notebook, {})
            timing = (f" ({record['wall_seconds']:.0f} s)" if "wall_seconds" in record else "")
            items.append(f'<li><a href="{pages[notebook].name}">{title}</a>{timing}: {summary} '
                         f'<a href="notebooks/{notebook}.ipynb">[.ipynb]</a></li>')
        else:
            items.append(f"<li>{title}: no finished run in this build.</li>")

    if comparison is None:
        comparison_html = (f"<p>Notebook A's per-class results (<code>{LIRA_PER_CLASS}</code>) "
                           "are missing, so the comparison is not available.</p>")
    else:
        comparison_html = (
            "<p>Mean online-LiRA MI AUC and test accuracy without poisoning, and their change "
            "under each attack, in this run and in the appendix's Table 6 (CIFAR-10, "
            "b<sub>poison</sub> = 1,000, 128 shadow models). Dataset, extractors and scale "
            "differ, so compare the direction of the changes, not the values.</p>"
            + _html_table(format_comparison(comparison))
            + f"<p>{html.escape(describe_table6_comparison(comparison))}</p>")

    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mexp report ({html.escape(profile)})</title>
<style>{INDEX_CSS}</style>
</head>
<body>
<h1>Amplifying membership exposure via data poisoning: appendix reproduction</h1>
<p class="subtitle">Profile <b>{html.escape(profile)}</b>, reproducing the appendix of
Chen et al., NeurIPS 2022.</p>
<p class="note">This is the fallback report, built with nbconvert: each executed notebook
with its code hidden. The Quarto report (sources in <code>report/</code>, rendered into
<code>build/{html.escape(profile)}/report/</code> when Quarto is installed) adds the full
setup, cross-references and a PDF.</p>
<h2>What was run</h2>
{facts_html}
<h2>Notebooks</h2>
<ul class="notebooks">
{chr(10).join(items)}
</ul>
<h2>Setup in short</h2>
{SETUP_HTML}
<h2>Comparison with the appendix's Table 6</h2>
{comparison_html}
</body>
</html>
"""
    path = Path(output_dir) / "index.html"
    path.write_text(page)
    return path


def build_html_report(build_dir: Path, output_dir: Path, *, profile: str) -> Path:
    """Build the fallback HTML report of one profile; return the index page's path.

    Every finished notebook (see `read_run_records`) ``<build_dir>/<notebook>.ipynb`` becomes
    ``<output_dir>/<notebook>.html`` and is copied to ``<output_dir>/notebooks/``.
    """
    build_dir, output_dir = Path(build_dir), Path(output_dir)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    (output_dir / "notebooks").mkdir(parents=True)
    records = read_run_records(build_dir)
    pages = {}
    for notebook in NOTEBOOKS:
        if notebook not in records:
            log.warning("no finished run of %s in %s; the index lists it without a link",
                        notebook, build_dir)
            continue
        executed = build_dir / f"{notebook}.ipynb"
        pages[notebook] = convert_notebook(executed, output_dir / f"{notebook}.html")
        shutil.copy2(executed, output_dir / "notebooks" / executed.name)
    per_class = build_dir / LIRA_PER_CLASS
    comparison = None
    if per_class.exists():
        dataset = ", ".join(_parameter_values({"a": records.get("a_lira", {})}, "dataset"))
        comparison = table6_comparison(pd.read_csv(per_class), dataset=dataset or "?")
    return write_index(output_dir, profile=profile, records=records, pages=pages,
                       comparison=comparison)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the report of one profile from its executed notebooks: the Quarto "
                    "report when quarto is on PATH, and always the fallback HTML report.")
    parser.add_argument("--profile", default="quick", help="parameter profile (folder of params/)")
    parser.add_argument("--build-root", type=Path, default=REPOSITORY / "build",
                        help="folder that contains <profile>/ (default: %(default)s)")
    parser.add_argument("--sources", type=Path, default=REPORT_SOURCES,
                        help="Quarto project folder (default: %(default)s)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    build_dir = arguments.build_root / arguments.profile
    if not build_dir.is_dir():
        print(f"error: no build folder {build_dir}; run `make notebooks PROFILE="
              f"{arguments.profile}` first", file=sys.stderr)
        return 1

    stage_results(build_dir, arguments.profile, report_dir=arguments.sources)
    problems = check_references(arguments.sources)
    for problem in problems:
        log.warning("unresolved reference: %s", problem)
    for message in stray_outputs(arguments.sources):
        log.warning("output that the report will show inside a figure or table: %s", message)

    status = 0
    quarto = shutil.which("quarto")
    if quarto is None:
        print(f"Quarto is not installed (no `quarto` on PATH), so the Quarto report was not "
              f"rendered. {QUARTO_INSTALL_HINT}", file=sys.stderr)
    elif problems:
        print(f"error: {len(problems)} references of the Quarto sources do not resolve (listed "
              "above); the Quarto report was not rendered", file=sys.stderr)
        status = 1
    else:
        try:
            destination = render_quarto(quarto, arguments.sources, build_dir / "report")
            print(f"Quarto report: {destination}")
        except subprocess.CalledProcessError as error:
            print(f"error: `quarto render {arguments.sources}` failed with exit status "
                  f"{error.returncode}; its messages are above", file=sys.stderr)
            status = 1

    index = build_html_report(build_dir, build_dir / "report-html", profile=arguments.profile)
    print(f"fallback HTML report: {index}")
    return status


if __name__ == "__main__":
    sys.exit(main())
