# colsim — set up a local virtual environment and run the demo or the tests.
#   make demo   # .venv + colsim run protocols/nonstationary.yaml --rule lpl
#   make test   # .venv + the whole test suite (fast and slow tests)
#   make docs   # .venv + the documentation site in site/ (mkdocs, warnings are errors)
PY    ?= python3
VENV  ?= .venv
# torch is pinned here only to pick the locally cached CPU wheel on fresh machines;
# colsim itself requires torch>=2.4 (override: make demo TORCH='torch>=2.4').
TORCH ?= torch==2.13.0
# make test's pytest-xdist workers (one per core; tests in one file share a worker and its module fixtures)
JOBS  ?= $(shell nproc 2>/dev/null || echo 2)
BIN    = $(VENV)/bin
STAMP  = $(VENV)/.colsim-installed

.PHONY: demo test test-fast bench docs setup clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,docs,dashboards,spiking,brainpy,distributed]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/colsim run protocols/nonstationary.yaml --rule lpl

test: $(STAMP)
	-bash tests/analysis/ensure_chromium.sh
	$(BIN)/python -m pytest -m "slow or not slow" -q -n $(JOBS) --dist loadfile --no-loadscope-reorder --durations=20

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_step.py

clean:
	rm -rf build dist *.egg-info
