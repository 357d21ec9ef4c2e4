# budgetgpt. Two commands: `make demo` (the whole pipeline on the bundled corpus, CPU, minutes)
# and `make test`. Both create .venv and install the locked environment on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum requirements.lock | cut -d' ' -f1)
DEMO_PARAMS := --params params.yaml --params params/demo.yaml

.PHONY: demo test setup profiles lint gpu-check cloud-env

setup: $(STAMP) profiles

# `snakemake --profile t4` looks for ./t4, ~/.config/snakemake/t4 and /etc/xdg/snakemake/t4 only:
# link our profiles into the user's config dir, never over a profile of the user's own.
PROFILE_HOME ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
profiles:
	@mkdir -p $(PROFILE_HOME)
	@for name in $(notdir $(wildcard profiles/*)); do \
	  target=$(PROFILE_HOME)/$$name; \
	  if [ -e $$target ] && [ ! -L $$target ]; then echo "kept your own profile $$target"; \
	  else ln -sfn $(CURDIR)/profiles/$$name $$target; fi; \
	done

$(STAMP): requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "budgetgpt needs Python 3.11: run make PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	rm -f $(VENV)/.installed-* && touch $@

# SkyPilot (sky jobs launch cloud/t4-spot.yaml), in an environment of its own: an optional extra,
# whose ~90 packages never enter the pipeline's; `make test` checks the task with its parser.
CLOUD_VENV  := .venv-cloud
CLOUD_STAMP := $(CLOUD_VENV)/.installed-$(shell cksum requirements-cloud.lock | cut -d' ' -f1)
cloud-env: $(CLOUD_STAMP)
$(CLOUD_STAMP): requirements-cloud.lock
	$(PYTHON) -m venv $(CLOUD_VENV)
	$(CLOUD_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-cloud.lock
	rm -f $(CLOUD_VENV)/.installed-* && touch $@

# The stage commands call `python`: the venv's, as if it were activated.
demo test: export PATH := $(CURDIR)/$(BIN):$(PATH)

demo: setup
	$(BIN)/python -m pipeline demo-corpus $(DEMO_PARAMS)
	$(BIN)/snakemake --profile profiles/cpu --configfile params/demo.yaml
	@cat reports/summary.md

# The test files run in parallel, one worker per core up to 4 (pytest-xdist), each file whole on
# one worker: a file's fixtures (a prepared checkout, a SLURM cluster, an image) are built once.
# Which files share a worker, and their order: tests/conftest.py.
test: setup cloud-env
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/python -m pipeline dag --check

# On a freshly rented GPU VM, before a paid run (<= 10 minutes): the memory and speed predictions
# against measurements, the 4 GB / 16 GB plans trained under memory caps, the driver, torch.compile,
# the SDPA kernel and the trained demo model's fp16 headroom (reports/gpu-check.md).
# No `make setup` needed: it uses .venv when there is one, else $(PYTHON) with the VM's torch.
# `make gpu-check DEVICE=cpu` runs the same code on the demo model on CPU (CI).
DEVICE ?= cuda
gpu-check: export PATH := $(CURDIR)/$(BIN):$(PATH)
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m pipeline.tools.gpucheck --device $(DEVICE)
