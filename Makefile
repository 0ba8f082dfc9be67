# The two commands of the README: `make demo` and `make test`. Everything else is a convenience.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.emocli-installed
DEMO   ?= data/demo

.PHONY: install test test-all demo bench clean

install: $(STAMP)

# torch first, pinned: this machine's pip finds the local CPU build of 2.13.0, while an unpinned torch
# would pull gigabytes of CUDA wheels. The package's own range is then already satisfied.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

test-all: $(STAMP)
	$(PY) -m pytest -n 2 -q -m ''

demo: $(STAMP)
	$(VENV)/bin/emocli synth $(DEMO)/corpus --per-class 150 --seed 0 --format tar.gz
	$(VENV)/bin/emocli prepare $(DEMO)/corpus/IEMOCAP_full_release.tar.gz --cache $(DEMO)/cache.h5

bench: $(STAMP)
	$(PY) bench/bench_prepare.py

clean:
	rm -rf $(VENV) data/demo
