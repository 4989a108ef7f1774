# The README's two commands. Both create .venv and install everything on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo demo-full test lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## make demo: collect demonstrations, train, evaluate, residual RL, a report with pictures
## and videos, on short budgets (under 10 min on 2 cores); make demo-full: the longer ones
demo: setup
	$(PY) scripts/demo.py

demo-full: setup
	$(PY) scripts/demo.py --full

## make test: the default test suite (fast CPU tests; `slow` and `gpu` marks excluded)
## pytest exits 5 when it collects no test: that is not a failure of the suite.
test: setup
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
