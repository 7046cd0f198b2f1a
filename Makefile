# The two commands of the README: `make demo` (the whole job on the embedded tiny default, on CPU) and
# `make test` (lint + the whole test suite). Both create .venv/ in the repo root on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.r1ft-installed

.PHONY: demo test lint format venv clean

venv: $(STAMP)

# torch first: pip takes the local CPU wheel of the pinned version here (the image takes its CUDA build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	R1FT_PRESET=smoke $(BIN)/r1ft run

lint: $(STAMP)
	$(BIN)/ruff check r1ft tests scripts
	$(BIN)/ruff format --check r1ft tests scripts

test: lint
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix r1ft tests scripts
	$(BIN)/ruff format r1ft tests scripts

clean:
	rm -rf work runs .pytest_cache .ruff_cache
