"""Execute the study's notebooks headless with papermill.

    python -m mexp_lib.runner a_lira --profile quick [-p n_shadow 32 ...]

For each notebook the runner reads ``params/<profile>/<notebook>.yaml``, converts the
reviewed ``notebooks/<notebook>.py`` (jupytext percent format) into a fresh notebook,
injects the parameters plus the run's folders, and executes it into
``build/<profile>/<notebook>.ipynb``. The notebook writes its tables and figures to
``build/<profile>/<notebook>/``; the runner adds ``run.json`` there (wall time, machine,
commit). A failing cell stops the run with the notebook's name and the cell; the
partially executed notebook stays on disk for inspection.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .store import save_json

log = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("a_lira", "b_heuristic", "c_dpsgd", "d_galleries")


class NotebookFailed(RuntimeError):
    """A notebook raised during execution."""


def read_parameters(profile: str, notebook: str, *, root: Path = REPOSITORY) -> dict:
    """Load ``params/<profile>/<notebook>.yaml`` as a dict."""
    path = root / "params" / profile / f"{notebook}.yaml"
    if not path.exists():
        profiles = sorted(p.name for p in (root / "params").iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"no parameter file {path}; known profiles: {', '.join(profiles)}; known "
            f"notebooks: {', '.join(NOTEBOOKS)}"
        )
    parameters = yaml.safe_load(path.read_text()) or {}
    if not isinstance(parameters, dict):
        raise ValueError(f"{path} must hold a mapping of parameter names to values")
    return parameters


def git_commit(root: Path = REPOSITORY) -> str:
    """Return the checked-out commit, '-dirty' when files differ or are untracked, or 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if changes else commit


def machine_description() -> str:
    """Describe this machine: CPU cores and GPU, for captions of measured times."""
    import os

    import torch

    description = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    if torch.cuda.is_available():
        description += f", {torch.cuda.get_device_name(0)}"
    else:
        description += ", no GPU"
    return description


def run_notebook(notebook: str, *, profile: str, overrides: dict | None = None,
                 root: Path = REPOSITORY, build_dir: Path | None = None) -> Path:
    """Execute one notebook for one profile; return the executed notebook's path.

    Raises:
        FileNotFoundError: unknown notebook or profile.
        ValueError: a parameter (from the profile or `overrides`) that the notebook's
            parameters cell does not define, such as a misspelt name.
        NotebookFailed: a cell raised; the message names the notebook and the cell.
    """
    import jupytext
    import papermill

    source = root / "notebooks" / f"{notebook}.py"
    if not source.exists():
        raise FileNotFoundError(f"no notebook {source}; known notebooks: {', '.join(NOTEBOOKS)}")
    parameters = read_parameters(profile, notebook, root=root)
    parameters.update(overrides or {})
    build_dir = (build_dir or root / "build" / profile).resolve()
    output_dir = build_dir / notebook
    parameters.update(profile=profile, output_dir=str(output_dir), run_dir=str(build_dir),
                      cache_dir=str((root / "build" / "cache").resolve()))

    source_notebook = jupytext.read(source)
    known = _parameter_names(source_notebook)
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(
            f"notebook {notebook} has no parameter {', '.join(map(repr, unknown))}; its "
            f"parameters are: {', '.join(sorted(known))}"
        )

    output_dir.mkdir(parents=True, exist_ok=True)
    # A run record marks a finished run. Removing it first keeps make and the report
    # from taking a failed rerun for a finished one.
    (output_dir / "run.json").unlink(missing_ok=True)
    unexecuted = build_dir / f".{notebook}.input.ipynb"
    jupytext.write(source_notebook, unexecuted)
    executed = build_dir / f"{notebook}.ipynb"
    log.info("executing %s (profile %s) into %s", notebook, profile, executed)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(unexecuted), str(executed), parameters=parameters,
                                   cwd=str(root / "notebooks"), kernel_name="python3",
                                   progress_bar=False, log_output=False)
    except papermill.PapermillExecutionError as error:
        raise NotebookFailed(
            f"notebook {notebook} (profile {profile}) failed in cell {error.exec_count}: "
            f"{error.ename}: {error.evalue}. The partially executed notebook is {executed}"
        ) from error
    finally:
        unexecuted.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    save_json(output_dir / "run.json", {
        "notebook": notebook, "profile": profile, "wall_seconds": round(seconds, 1),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(), "commit": git_commit(root),
        "parameters": parameters,
    })
    log.info("%s finished in %.0f s", notebook, seconds)
    return executed


def _parameter_names(notebook) -> set[str]:
    """Return the names assigned in the notebook's cell tagged `parameters`."""
    import ast

    names: set[str] = set()
    for cell in notebook.cells:
        if "parameters" in cell.metadata.get("tags", []):
            for statement in ast.parse(cell.source).body:
                if isinstance(statement, (ast.Assign, ast.AnnAssign)):
                    targets = statement.targets if isinstance(statement, ast.Assign) else [
                        statement.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _parse_value(text: str) -> object:
    """Read a -p value as YAML, so numbers, lists and booleans keep their types."""
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute the study's notebooks with papermill.")
    parser.add_argument("notebooks", nargs="+", help=f"notebook names ({', '.join(NOTEBOOKS)})")
    parser.add_argument("--profile", default="quick", help="parameter profile (folder of params/)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="override one parameter (value as YAML)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        overrides = {name: _parse_value(value) for name, value in arguments.parameter}
    except yaml.YAMLError as error:
        parser.error(f"a -p value is not valid YAML: {error}")
    for notebook in arguments.notebooks:
        try:
            run_notebook(notebook, profile=arguments.profile, overrides=overrides)
        except (NotebookFailed, FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
