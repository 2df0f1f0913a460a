# `make test` works on a fresh clone: it builds .venv from nothing, then checks everything.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv test lint typecheck pytest demo bench docs clean

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

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck docs pytest

demo: $(STAMP)
	$(BIN)/python -m deerluma demo

bench: $(STAMP)
	$(BIN)/python -m bench

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

clean:
	rm -rf $(VENV) site .mypy_cache .pytest_cache .ruff_cache
