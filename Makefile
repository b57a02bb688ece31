# Builds the virtual environment from nothing and runs the two README commands.
# torch is installed first, pinned: 2.13.0 is a local CPU wheel here; anything else pulls CUDA.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_OUT ?= runs/main
# the project's HH-RLHF copy lives beside the checkout; an explicit HH_RLHF_DIR wins
HH_RLHF_DIR ?= $(if $(wildcard ../shared/data/hh-rlhf),$(abspath ../shared/data/hh-rlhf),)
export HH_RLHF_DIR

.PHONY: venv run test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/fedvpa-secure experiment --out $(RUN_OUT)

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
