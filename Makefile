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
	$(PY) -m pip install --quiet -e '.[dev,align]'
	touch $@

# The main job: certificates, a server and client processes on loopback, secure aggregation,
# HH-RLHF (protocol p3) when the data is there (synthetic otherwise), report + plots in RUN_OUT.
# A previous demo run in RUN_OUT is replaced (simulate itself refuses to reuse a run folder).
run: venv
	@if [ -e $(RUN_OUT) ]; then echo "replacing the previous run in $(RUN_OUT)"; rm -rf $(RUN_OUT); fi
	HF_HUB_OFFLINE=1 $(VENV)/bin/fedvpa-secure simulate \
		$(if $(HH_RLHF_DIR),--protocol p3 --data $(HH_RLHF_DIR),--protocol synthetic) \
		--out $(RUN_OUT)
	$(VENV)/bin/fedvpa-secure audit $(RUN_OUT)

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
