# bayesdl developer entry points. Quick start: `make demo`, then `make test`.
#
# On the project's machines `pip install torch==2.13.0` takes a local CPU build; an unpinned torch
# would pull a multi-GB CUDA build. Override TORCH_SPEC to choose another build, e.g.
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
OUT ?= bayesdl-output

# Idle OpenMP workers spin by default and steal the core that Pyro's Python-heavy steps need;
# on a 2-core machine that costs 2-5x whenever anything else runs (benchmarks/README.md).
export OMP_WAIT_POLICY ?= PASSIVE
# mkdocs-material prints a banner about MkDocs 2.0 on every build.
export NO_MKDOCS_2_WARNING ?= 1

PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: help venv demo test test-fast lint format docs docs-serve bench notebooks clean

help:
	@echo "make demo       create .venv, install bayesdl, run the SVI-vs-HMC comparison on embedded data"
	@echo "make test       lint, unit tests, notebooks (smoke mode) and the strict docs build"
	@echo "make test-fast  unit tests without the slow and notebook tests"
	@echo "make bench      benchmarks, printing ratios measured side by side"
	@echo "make docs       build the documentation site into site/"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the package metadata changes; torch first so that the range in pyproject.toml
# is already satisfied by the chosen build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[$(EXTRAS)]"
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bayesdl compare --output $(OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Notebooks run in smoke mode (CI=1 shrinks iteration counts inside them).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	CI=1 MPLBACKEND=Agg $(PY) -m pytest tests
	CI=1 MPLBACKEND=Agg $(PY) -m pytest --nbmake --nbmake-timeout=600 notebooks
	$(VENV)/bin/mkdocs build --strict --quiet

test-fast: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest tests -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run.py

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) site build dist *.egg-info .pytest_cache .ruff_cache $(OUT)
