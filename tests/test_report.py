"""Tests of the report: the Quarto sources against the notebooks, staging and the fallback HTML."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import stat
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from PIL import Image

from mexp_lib import report
from mexp_lib.runner import NOTEBOOKS, REPOSITORY

LABEL_PREFIXES = {"a_lira": "a", "b_heuristic": "b", "c_dpsgd": "c", "d_galleries": "d"}
CODE_MARKER = "code_that_must_stay_hidden = 1"


# --------------------------------------------------------------------------- helpers


def _png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color=(200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_executed_notebook(path: Path, *, prefix: str = "a") -> Path:
    """Write a small notebook that looks executed: a labelled figure and table, a log line."""
    figure = nbformat.v4.new_code_cell(
        f'#| label: fig-{prefix}-demo\n#| fig-cap: "A demo figure, {prefix}."\n{CODE_MARKER}\n',
        execution_count=2,
        outputs=[nbformat.v4.new_output("display_data", data={"image/png": _png_base64(),
                                                              "text/plain": "<Figure>"})])
    table = nbformat.v4.new_code_cell(
        f'#| label: tbl-{prefix}-demo\n#| tbl-cap: "A demo table."\nshow_table()\n',
        execution_count=3,
        outputs=[nbformat.v4.new_output("display_data",
                                        data={"text/markdown": "| x |\n|---|\n| 1 |"})])
    logged = nbformat.v4.new_code_cell(
        "run()", execution_count=4,
        outputs=[nbformat.v4.new_output("stream", name="stderr", text="progress bar 50%\n"),
                 nbformat.v4.new_output("stream", name="stdout", text="visible result\n")])
    unexecuted = nbformat.v4.new_code_cell(f"#| label: fig-{prefix}-empty\nplot()\n")
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# Demo notebook {prefix}\n\nWhat it shows."),
        figure, table, logged, unexecuted])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def write_build(build_dir: Path, notebooks: tuple[str, ...]) -> Path:
    """Write a fake build/<profile>/ with executed notebooks, run.json and a large artifact."""
    for notebook in notebooks:
        write_executed_notebook(build_dir / f"{notebook}.ipynb",
                                prefix=LABEL_PREFIXES[notebook])
        outputs = build_dir / notebook
        outputs.mkdir(parents=True, exist_ok=True)
        (outputs / "figure.png").write_bytes(base64.b64decode(_png_base64()))
        (outputs / "artifact.npz").write_bytes(b"large")
        (outputs / "run.json").write_text(json.dumps({
            "notebook": notebook, "profile": "demo", "wall_seconds": 12.5,
            "finished": "2026-01-02T03:04:05+00:00", "machine": "test machine",
            "commit": "abc123", "parameters": {
                "dataset": "mnist5k", "extractors": ["efficientnet_lite0"],
                "members_per_class": 20, "b_poison": 20, "target_classes": [0, 1]}}))
    return build_dir


def copy_sources(destination: Path) -> Path:
    """Copy the Quarto sources of report/ without generated or rendered files."""
    return Path(shutil.copytree(
        report.REPORT_SOURCES, destination,
        ignore=shutil.ignore_patterns(report.STAGING_FOLDER, "_output", ".quarto", "_freeze",
                                      "_variables.yml")))


def source_labels(notebook: str) -> set[str]:
    """Read the `#| label:` values of a notebook's jupytext source."""
    text = (REPOSITORY / "notebooks" / f"{notebook}.py").read_text()
    return set(re.findall(r"^#\|\s*label:\s*(\S+)\s*$", text, flags=re.MULTILINE))


def embeds_by_notebook() -> dict[str, list[report.Reference]]:
    embeds: dict[str, list[report.Reference]] = {notebook: [] for notebook in NOTEBOOKS}
    for source in report.quarto_sources(report.REPORT_SOURCES):
        for reference in report.find_references(source):
            if reference.kind == "embed":
                embeds.setdefault(Path(reference.path).stem, []).append(reference)
    return embeds


def require_notebook_source(notebook: str) -> None:
    if not (REPOSITORY / "notebooks" / f"{notebook}.py").exists():
        pytest.skip(f"notebooks/{notebook}.py does not exist yet")


# --------------------------------------------------------------------------- Quarto sources


def test_sources_embed_only_study_notebooks():
    embeds = embeds_by_notebook()
    assert set(embeds) == set(NOTEBOOKS), f"embeds of unknown notebooks: {set(embeds) - set(NOTEBOOKS)}"
    for notebook, references in embeds.items():
        assert references, f"the report embeds nothing from {notebook}"
        for reference in references:
            assert reference.path == f"{report.STAGING_FOLDER}/{notebook}.ipynb", str(reference)
            prefix = LABEL_PREFIXES[notebook]
            assert reference.label.startswith((f"fig-{prefix}-", f"tbl-{prefix}-")), str(reference)


def test_sources_embed_each_cell_once():
    pairs = [(reference.path, reference.label)
             for references in embeds_by_notebook().values() for reference in references]
    duplicates = {pair for pair in pairs if pairs.count(pair) > 1}
    assert not duplicates


def test_sources_cite_only_known_keys():
    bibliography = (report.REPORT_SOURCES / "references.bib").read_text()
    keys = set(re.findall(r"^@\w+\{([^,]+),", bibliography, flags=re.MULTILINE))
    cited = set()
    for source in report.quarto_sources(report.REPORT_SOURCES):
        cited |= set(re.findall(r"\[@([\w-]+)\]", source.read_text()))
    assert cited, "the sources cite nothing"
    assert cited <= keys, f"cited but not in references.bib: {cited - keys}"


def test_quarto_project_renders_html_and_typst():
    project = yaml.safe_load((report.REPORT_SOURCES / "_quarto.yml").read_text())
    assert project["project"]["type"] == "manuscript"
    assert project["format"]["html"]["embed-resources"] is True
    assert "typst" in project["format"]
    listed = [entry["notebook"] for entry in project["manuscript"]["notebooks"]]
    assert listed == [f"{report.STAGING_FOLDER}/{notebook}.ipynb" for notebook in NOTEBOOKS]


def test_appendix_table6_text_matches_constants():
    text = (report.REPORT_SOURCES / "_a-lira.qmd").read_text()
    for extractor, settings in report.APPENDIX_TABLE6.items():
        row = re.search(rf"^\| {extractor} \|(.*)\|$", text, flags=re.MULTILINE)
        assert row, f"no row for {extractor} in _a-lira.qmd"
        cells = [cell.strip() for cell in row[1].split("|")]
        expected = []
        for attack in ("none", "dirty_label", "clean_label"):
            auc, tpr_percent, accuracy = settings[attack]
            expected += [f"{auc:.3f}".lstrip("0"), f"{tpr_percent:.2f}%",
                         f"{accuracy:.3f}".lstrip("0")]
        assert cells == expected, extractor


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_embedded_labels_exist_in_notebook_source(notebook):
    require_notebook_source(notebook)
    missing = {reference.label for reference in embeds_by_notebook()[notebook]} - source_labels(
        notebook)
    assert not missing, f"labels embedded by report/ but absent from notebooks/{notebook}.py"


# --------------------------------------------------------------------------- parsing


def test_find_references_skips_code_blocks(tmp_path):
    source = tmp_path / "page.qmd"
    source.write_text(
        "Text {{< embed results/a_lira.ipynb#fig-a-roc echo=true >}}\n"
        "```markdown\n{{< embed results/a_lira.ipynb#fig-a-hidden >}}\n```\n"
        "{{< include _part.qmd >}}\n![local](figures/x.png) ![web](https://example.org/y.png)\n")
    references = report.find_references(source)
    assert [(r.kind, r.path, r.label, r.line) for r in references] == [
        ("embed", "results/a_lira.ipynb", "fig-a-roc", 1),
        ("include", "_part.qmd", None, 5),
        ("image", "figures/x.png", None, 6),
    ]


def test_cell_options_reads_leading_lines_only():
    cell = nbformat.v4.new_code_cell(
        '#| label: fig-a-roc\n#| fig-cap: "ROC, log-log axes"\nx = 1\n#| label: ignored\n')
    assert report.cell_options(cell) == {"label": "fig-a-roc", "fig-cap": "ROC, log-log axes"}
    assert report.cell_options(nbformat.v4.new_markdown_cell("#| label: fig-x")) == {}


def test_check_references_lists_each_problem(tmp_path):
    write_executed_notebook(tmp_path / "results" / "a_lira.ipynb")
    (tmp_path / "page.qmd").write_text(
        "{{< embed results/a_lira.ipynb#fig-a-demo >}}\n"
        "{{< embed results/a_lira.ipynb#tbl-a-demo >}}\n"
        "{{< embed results/a_lira.ipynb#fig-a-missing >}}\n"
        "{{< embed results/a_lira.ipynb#fig-a-empty >}}\n"
        "{{< embed results/b_heuristic.ipynb#fig-b-demo >}}\n"
        "{{< include results/absent.md >}}\n")
    problems = report.check_references(tmp_path)
    assert len(problems) == 4, problems
    assert "no cell labelled fig-a-missing" in problems[0]
    assert "fig-a-demo" in problems[0], "the message should list the labels that exist"
    assert "cell fig-a-empty" in problems[1]
    assert "no outputs" in problems[1]
    assert "b_heuristic.ipynb" in problems[2]
    assert "not found" in problems[2]
    assert "absent.md" in problems[3]


def test_stray_outputs_of_embedded_cells(tmp_path):
    notebook = write_executed_notebook(tmp_path / "results" / "a_lira.ipynb")
    content = nbformat.read(notebook, as_version=4)
    content.cells[2].outputs.append(nbformat.v4.new_output(
        "execute_result", data={"text/plain": "PosixPath('table.csv')"}, execution_count=3))
    content.cells[1].outputs.insert(0, nbformat.v4.new_output(
        "stream", name="stderr", text="RuntimeWarning: Mean of empty slice\n"))
    nbformat.write(content, notebook)
    (tmp_path / "page.qmd").write_text(
        "{{< embed results/a_lira.ipynb#fig-a-demo >}}\n"
        "{{< embed results/a_lira.ipynb#tbl-a-demo >}}\n")
    messages = report.stray_outputs(tmp_path)
    assert len(messages) == 2, messages
    assert "fig-a-demo" in messages[0]
    assert "Mean of empty slice" in messages[0]
    assert "tbl-a-demo" in messages[1]
    assert "PosixPath" in messages[1]


def test_stray_outputs_requires_figure_output(tmp_path):
    write_executed_notebook(tmp_path / "results" / "a_lira.ipynb")
    (tmp_path / "page.qmd").write_text("{{< embed results/a_lira.ipynb#fig-a-demo >}}\n")
    assert report.stray_outputs(tmp_path) == []
    content = nbformat.read(tmp_path / "results" / "a_lira.ipynb", as_version=4)
    content.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
    nbformat.write(content, tmp_path / "results" / "a_lira.ipynb")
    messages = report.stray_outputs(tmp_path)
    assert any("no image/png" in message for message in messages), messages


# --------------------------------------------------------------------------- staging


def test_stage_results_copies_build_and_writes_variables(tmp_path):
    build = write_build(tmp_path / "build" / "demo", ("a_lira", "c_dpsgd"))
    sources = copy_sources(tmp_path / "report")
    records = report.stage_results(build, "demo", report_dir=sources)

    assert set(records) == {"a_lira", "c_dpsgd"}
    staged = sources / report.STAGING_FOLDER
    assert (staged / "a_lira.ipynb").exists()
    assert (staged / "a_lira" / "figure.png").exists()
    assert (staged / "a_lira" / "run.json").exists()
    assert not (staged / "a_lira" / "artifact.npz").exists(), "large artifacts stay in build/"
    assert not (staged / "b_heuristic.ipynb").exists()

    run = yaml.safe_load((sources / "_variables.yml").read_text())["run"]
    assert run["profile"] == "demo"
    assert run["datasets"] == "mnist5k"
    assert run["extractors"] == "efficientnet_lite0"
    assert run["commit"] == "abc123"
    assert run["missing"] == "b_heuristic, d_galleries"
    assert "20 members per class" in run["scale"]
    assert "target classes 0, 1" in run["scale"]
    summary = (staged / "run-summary.md").read_text()
    assert "{#tbl-run-summary}" in summary
    assert "c_dpsgd" in summary
    assert "missing" in (staged / "table6-comparison.md").read_text()


def test_stage_results_replaces_previous_profile(tmp_path):
    sources = copy_sources(tmp_path / "report")
    report.stage_results(write_build(tmp_path / "one", ("a_lira", "b_heuristic")), "one",
                         report_dir=sources)
    report.stage_results(write_build(tmp_path / "two", ("a_lira",)), "two", report_dir=sources)
    assert not (sources / report.STAGING_FOLDER / "b_heuristic.ipynb").exists()


def test_failed_rerun_is_left_out(tmp_path):
    build = write_build(tmp_path / "build" / "demo", ("a_lira", "b_heuristic"))
    run_json = build / "b_heuristic" / "run.json"
    later = run_json.stat().st_mtime + 10
    os.utime(build / "b_heuristic.ipynb", (later, later))
    assert set(report.read_run_records(build)) == {"a_lira"}

    sources = copy_sources(tmp_path / "report")
    report.stage_results(build, "demo", report_dir=sources)
    assert not (sources / report.STAGING_FOLDER / "b_heuristic.ipynb").exists()
    page = report.build_html_report(build, tmp_path / "html", profile="demo").read_text()
    assert 'href="b_heuristic.html"' not in page


def test_table6_comparison_changes():
    per_class = pd.DataFrame({
        "extractor": ["lite0"] * 6,
        "attack": ["none", "dirty_label", "clean_label"] * 2,
        "lira_online_auc": [0.60, 0.70, 0.55, 0.62, 0.72, 0.57],
        "test_accuracy": [0.90, 0.85, 0.88, 0.92, 0.87, 0.90],
    })
    comparison = report.table6_comparison(per_class, dataset="mnist5k")
    run = comparison.loc["this run: lite0 (mnist5k)"]
    assert run["MI AUC, no poisoning"] == pytest.approx(0.61)
    assert run["Δ AUC, dirty-label"] == pytest.approx(0.10)
    assert run["Δ AUC, clean-label"] == pytest.approx(-0.05)
    assert run["Δ acc., dirty-label"] == pytest.approx(-0.05)
    inception = comparison.loc["appendix: InceptionV3 (CIFAR-10)"]
    assert inception["Δ AUC, dirty-label"] == pytest.approx(0.799 - 0.712)
    assert inception["test acc., no poisoning"] == pytest.approx(0.677)
    assert len(comparison) == 1 + len(report.APPENDIX_TABLE6)

    sentence = report.describe_table6_comparison(comparison)
    assert "In this run, poisoning raised the mean MI AUC in 1 of 2" in sentence
    assert "In the appendix, poisoning raised the mean MI AUC in 10 of 10" in sentence
    formatted = report.format_comparison(comparison)
    assert formatted.loc["this run: lite0 (mnist5k)", "Δ AUC, clean-label"] == "-0.050"
    assert formatted.loc["this run: lite0 (mnist5k)", "Δ AUC, dirty-label"] == "+0.100"


# --------------------------------------------------------------------------- fallback HTML


def test_fallback_report_links_notebooks_and_hides_code(tmp_path):
    build = write_build(tmp_path / "build" / "demo", ("a_lira", "b_heuristic"))
    index = report.build_html_report(build, tmp_path / "html", profile="demo")

    page = index.read_text()
    for notebook in ("a_lira", "b_heuristic"):
        assert f'href="{notebook}.html"' in page
        assert f'href="notebooks/{notebook}.ipynb"' in page
        assert (tmp_path / "html" / "notebooks" / f"{notebook}.ipynb").exists()
    for notebook in ("c_dpsgd", "d_galleries"):
        assert f'href="{notebook}.html"' not in page
        assert "no finished run in this build" in page
    assert "abc123" in page
    assert "test machine" in page

    converted = (tmp_path / "html" / "a_lira.html").read_text()
    assert "data:image/png;base64," in converted, "images must be embedded"
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', converted)
    assert sources and all(source.startswith("data:") for source in sources)
    assert "code_that_must_stay_hidden" not in converted
    assert "progress bar" not in converted, "stderr should be dropped"
    assert "visible result" in converted
    assert 'id="fig-a-demo"' in converted
    assert "A demo figure, a." in converted
    assert 'alt="A demo figure, a."' in converted
    assert 'href="index.html"' in converted


def test_fallback_report_shows_table6_comparison(tmp_path):
    build = write_build(tmp_path / "build" / "demo", ("a_lira",))
    pd.DataFrame({"extractor": ["lite0"] * 3, "attack": ["none", "dirty_label", "clean_label"],
                  "lira_online_auc": [0.6, 0.7, 0.65], "test_accuracy": [0.9, 0.8, 0.85]}
                 ).to_csv(build / report.LIRA_PER_CLASS, index=False)
    page = report.build_html_report(build, tmp_path / "html", profile="demo").read_text()
    assert "this run: lite0 (mnist5k)" in page
    assert "+0.100" in page
    assert "in 2 of 2 extractor-attack pairs" in page


# --------------------------------------------------------------------------- command line


def test_main_without_quarto_builds_fallback(tmp_path, monkeypatch, capsys):
    write_build(tmp_path / "build" / "demo", ("a_lira",))
    sources = copy_sources(tmp_path / "report")
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    status = report.main(["--profile", "demo", "--build-root", str(tmp_path / "build"),
                          "--sources", str(sources)])
    assert status == 0
    assert "Quarto is not installed" in capsys.readouterr().err
    assert (tmp_path / "build" / "demo" / "report-html" / "index.html").exists()
    assert not (tmp_path / "build" / "demo" / "report").exists()


def test_main_renders_with_quarto_on_path(tmp_path, monkeypatch):
    build = write_build(tmp_path / "build" / "demo", NOTEBOOKS)
    sources = tmp_path / "report"
    sources.mkdir()
    (sources / "index.qmd").write_text("{{< embed results/a_lira.ipynb#fig-a-demo >}}\n")
    fake_quarto = tmp_path / "bin" / "quarto"
    fake_quarto.parent.mkdir()
    # Stands in for `quarto render <project>`: writes the project's _output/index.html.
    fake_quarto.write_text('#!/bin/sh\nmkdir -p "$2/_output" && echo rendered > "$2/_output/index.html"\n')
    fake_quarto.chmod(fake_quarto.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_quarto.parent}{os.pathsep}{os.environ['PATH']}")
    status = report.main(["--profile", "demo", "--build-root", str(tmp_path / "build"),
                          "--sources", str(sources)])
    assert status == 0
    assert (build / "report" / "index.html").read_text().strip() == "rendered"


def test_main_reports_failed_quarto_render(tmp_path, monkeypatch, capsys):
    build = write_build(tmp_path / "build" / "demo", ("a_lira",))
    sources = tmp_path / "report"
    sources.mkdir()
    (sources / "index.qmd").write_text("No embeds.\n")
    fake_quarto = tmp_path / "bin" / "quarto"
    fake_quarto.parent.mkdir()
    fake_quarto.write_text("#!/bin/sh\nexit 3\n")
    fake_quarto.chmod(fake_quarto.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_quarto.parent}{os.pathsep}{os.environ['PATH']}")
    status = report.main(["--profile", "demo", "--build-root", str(tmp_path / "build"),
                          "--sources", str(sources)])
    assert status == 1
    assert "failed with exit status 3" in capsys.readouterr().err
    assert (build / "report-html" / "index.html").exists(), "the fallback is built regardless"


def test_main_rejects_unresolved_embeds_before_quarto(tmp_path, monkeypatch, capsys):
    write_build(tmp_path / "build" / "demo", ("a_lira",))
    sources = tmp_path / "report"
    sources.mkdir()
    (sources / "index.qmd").write_text("{{< embed results/a_lira.ipynb#fig-a-absent >}}\n")
    monkeypatch.setattr(report.shutil, "which", lambda name: "/nonexistent/quarto")
    status = report.main(["--profile", "demo", "--build-root", str(tmp_path / "build"),
                          "--sources", str(sources)])
    assert status == 1
    assert "do not resolve" in capsys.readouterr().err


def test_main_rejects_missing_build(tmp_path, capsys):
    assert report.main(["--profile", "absent", "--build-root", str(tmp_path)]) == 1
    assert "make notebooks PROFILE=absent" in capsys.readouterr().err


# --------------------------------------------------------------------------- smoke notebooks


@pytest.fixture(scope="session")
def staged_smoke_report(smoke_build, tmp_path_factory) -> Path:
    build, _ = smoke_build
    sources = copy_sources(tmp_path_factory.mktemp("report-sources") / "report")
    report.stage_results(build, "smoke", report_dir=sources)
    return sources


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_embeds_resolve_in_smoke_notebooks(notebook, smoke_build, staged_smoke_report):
    require_notebook_source(notebook)
    _, attempts = smoke_build
    if notebook not in attempts:
        pytest.skip(f"notebooks/{notebook}.py appeared after this session's smoke runs")
    assert attempts[notebook] is None, attempts[notebook]
    problems = [problem for problem in report.check_references(staged_smoke_report)
                if f"{notebook}.ipynb" in problem]
    assert not problems, "\n".join(problems)


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_embedded_cells_show_only_their_output(notebook, smoke_build, staged_smoke_report):
    require_notebook_source(notebook)
    _, attempts = smoke_build
    if attempts.get(notebook, "not run") is not None:
        pytest.skip(f"{notebook} did not finish on the smoke profile in this session")
    messages = [message for message in report.stray_outputs(staged_smoke_report)
                if f"{notebook}.ipynb" in message]
    assert not messages, "\n".join(messages)


@pytest.mark.notebook
def test_included_files_exist_after_staging(staged_smoke_report):
    problems = [problem for problem in report.check_references(staged_smoke_report)
                if ": include " in problem or ": image " in problem]
    assert not problems, "\n".join(problems)


@pytest.mark.notebook
def test_fallback_report_of_smoke_notebooks(smoke_build, tmp_path):
    build, _ = smoke_build
    executed = list(report.read_run_records(build))
    if not executed:
        pytest.skip("no notebook finished on the smoke profile")
    index = report.build_html_report(build, tmp_path / "html", profile="smoke")
    for notebook in executed:
        converted = (tmp_path / "html" / f"{notebook}.html").read_text()
        assert f'href="{notebook}.html"' in index.read_text()
        assert "data:image/png;base64," in converted
        assert 'class="caption"' in converted
