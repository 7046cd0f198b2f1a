# The commands of the README: `make demo` (the whole job on the embedded tiny default, on CPU), `make test`
# (lint + the whole test suite; both create .venv/ in the repo root on first use) and `make image-check`
# (the image built with podman and the job run in it; root on Debian 12, see scripts/image-check).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.r1ft-installed

.PHONY: demo test image-check lint format venv clean

venv: $(STAMP)

# torch first (pip takes the CPU wheel of the pinned version here; the image takes its CUDA build), then
# every other package exactly as locked, with hashes; then the project itself.
$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	R1FT_PRESET=smoke $(BIN)/r1ft run

PYFILES := r1ft tests scripts scripts/vast-launch scripts/collect scripts/bench scripts/bench-generate

lint: $(STAMP)
	$(BIN)/ruff check $(PYFILES)
	$(BIN)/ruff format --check $(PYFILES)
	$(BIN)/hadolint --config docker/hadolint.yaml Dockerfile
	bash -n entrypoint scripts/lock scripts/gpu-wheels scripts/gpu-validate scripts/image-check .ci/run

test: lint
	$(BIN)/python -m pytest -q

image-check:
	scripts/image-check

format: $(STAMP)
	$(BIN)/ruff check --fix $(PYFILES)
	$(BIN)/ruff format $(PYFILES)

clean:
	rm -rf work runs .pytest_cache .ruff_cache
