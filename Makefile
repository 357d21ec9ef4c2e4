# budgetgpt. Two commands: `make demo` (the whole pipeline on the bundled corpus, CPU, minutes)
# and `make test`. Both create .venv and install the locked environment on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum requirements.lock | cut -d' ' -f1)
DEMO_PARAMS := --params params.yaml --params params/demo.yaml

.PHONY: demo test setup lint clean-demo

setup: $(STAMP)

$(STAMP): requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "budgetgpt needs Python 3.11: run make PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/python -m pipeline demo-corpus $(DEMO_PARAMS)
	$(BIN)/snakemake --profile profiles/cpu --config 'params_files=[params.yaml,params/demo.yaml]'
	@cat reports/summary.md

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/python -m pipeline dag --check
