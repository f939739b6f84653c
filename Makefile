# mexp: set-up, tests, notebook execution and the report.
#   make report              run every notebook of PROFILE (default quick) and render the report
#   make test                the test suite (smoke-profile notebooks included)
#   make notebook NB=a_lira  one notebook
#   make bench               speed and memory measurements

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
NOTEBOOKS := a_lira b_heuristic c_dpsgd d_galleries
BUILD := build/$(PROFILE)
LIBRARY := $(wildcard mexp_lib/*.py)

.PHONY: setup test notebooks notebook report bench sync clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

test: setup
	$(PY) -m pytest

# run.json is written only when a notebook finished, so a failed notebook runs again.
notebooks: $(foreach nb,$(NOTEBOOKS),$(BUILD)/$(nb)/run.json)

$(BUILD)/%/run.json: notebooks/%.py params/$(PROFILE)/%.yaml $(LIBRARY) | setup
	$(PY) -m mexp_lib.runner $* --profile $(PROFILE)

notebook: setup
	$(PY) -m mexp_lib.runner $(NB) --profile $(PROFILE)

# Re-pair the .ipynb twins after editing a notebook's .py source.
sync: setup
	$(VENV)/bin/jupytext --sync notebooks/*.py

# Render the report of PROFILE: the Quarto manuscript (HTML and Typst PDF) in
# build/$(PROFILE)/report/ when quarto is on PATH, and always the nbconvert fallback
# in build/$(PROFILE)/report-html/.
report: notebooks
	$(PY) -m mexp_lib.report --profile $(PROFILE)

clean:
	rm -rf build/$(PROFILE) report/results report/_variables.yml report/_output report/.quarto

bench: setup
	$(PY) bench/bench.py
