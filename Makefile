# sagemaker-image-classifier: `make demo` and `make test` set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: venv demo test test-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## the development environment: every extra, pytest

demo: $(STAMP)  ## sample data → training job in ./local/opt_ml → server → predictions
	$(VENV)/bin/image-classifier demo

test: $(STAMP)  ## the whole suite (what CI runs)
	$(PY) -m pytest

test-quick: $(STAMP)  ## everything but the real training jobs and servers
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) local build src/*.egg-info .pytest_cache
