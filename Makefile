# One-command set-up: `make demo` (the main job) and `make test` install what they need first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
# Offline CIFAR-10 (shared/assets beside the checkout) unless the caller says otherwise.
export CLIPFED_DATA_DIR ?= $(abspath ../shared/assets)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
# pip on these machines warns about every missing local index folder; keep real errors.
# --no-compile: byte-compiling every installed file (torch has thousands) costs over a minute;
# Python compiles what it imports on first use.
PIP_FILTER := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: install demo test test-fast test-docker lint bench-overhead clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e '.[test]' 2>&1 | $(PIP_FILTER)
	$(PY) -c "import clipfed, flwr, torch, open_clip" 
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(VENV)/bin/clipfed demo

test: install
	$(PY) -m pytest -q -rs --durations=25

lint: install
	$(VENV)/bin/ruff check clipfed tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo

test-fast: install
	$(PY) -m pytest -q -rs --durations=25 -m "not e2e"

# docker-compose.yml brought up for real (tests/test_docker_compose.py): builds the images offline
# (docker/build-offline.sh), 2 rounds of CLIP-Fed on 4 SuperNodes, `down -v`. Needs a running
# Docker engine, or root and dockerd (it starts and stops one); else it skips with the reason.
# `make test` skips it. Heavy: the first build makes ~8 GB of images.
test-docker: install
	CLIPFED_DOCKER_TEST=1 $(PY) -m pytest -q -s -rs -m docker tests/test_docker_compose.py

# The framework's cost over bare torch per model and device, and CLIP-Fed's server step (README).
bench-overhead: install
	$(VENV)/bin/clipfed bench-device --out-dir runs/bench-device

clean:
	rm -rf $(VENV) .pytest_cache
