# `make test` works on a fresh clone: it builds .venv from nothing, then checks everything.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The other legs of CI: the suite on the lowest versions pyproject.toml allows, and on the
# newest Python on the machine, each in a venv of its own.
LOWEST := .venv-lowest
NEWEST := .venv-newest
NEWEST_PYTHON ?= $(shell .ci/newest-python)

.PHONY: all venv test lint typecheck pytest demo bench docs clean test-lowest test-newest-python

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cli,dev,docs]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check deerluma tests bench
	$(BIN)/ruff format --check deerluma tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict deerluma

# Two workers: the suite mostly waits (the command line's processes, real sockets), so they
# overlap the waiting; each test has its own folders, ports and PostgreSQL database.
PYTEST := -m pytest -q -n 2

pytest: $(STAMP)
	$(BIN)/python $(PYTEST)

test: lint typecheck docs pytest

demo: $(STAMP)
	$(BIN)/python -m deerluma demo

bench: $(STAMP)
	$(BIN)/python -m bench

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# Installed compiled (uv does not compile by default, and this machine's PYTHONDONTWRITEBYTECODE
# keeps Python from caching): else every process of the suite compiles its dependencies anew.
test-lowest: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	rm -rf $(LOWEST)
	$(BIN)/uv venv --quiet --python $(BIN)/python $(LOWEST)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(LOWEST)/bin/python --resolution lowest-direct -e '.[cli,dev]'
	$(LOWEST)/bin/python $(PYTEST) -p no:cacheprovider

test-newest-python:
	rm -rf $(NEWEST)
	$(NEWEST_PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST)/bin/python -m pip install --quiet -e '.[cli,dev]'
	$(NEWEST)/bin/python $(PYTEST) -p no:cacheprovider

clean:
	rm -rf $(VENV) $(LOWEST) $(NEWEST) site .mypy_cache .pytest_cache .ruff_cache
