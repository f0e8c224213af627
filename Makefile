# gradlab: `make test` and `make reproduce` work on a fresh clone (they create .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: install test reproduce lint bench docs clean

# torch first, pinned: on these machines that is the CPU wheel on disk. The package's own
# range then admits it, so `pip install -e` installs nothing heavier.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Python keeps its bytecode caches (__pycache__, git-ignored) even where the environment says
# not to write them: the suite starts some forty Python processes that import gradlab (runs,
# compares and their fork servers, submitit jobs, the two workers), and without the caches each
# compiled gradlab's modules anew, about 0.2 s of the 4.8 CPU-seconds of a small `gradlab run`
# (medians of 8 interleaved runs each way).
PY_CACHE := env -u PYTHONDONTWRITEBYTECODE

# Two workers: the signal and subprocess tests wait on other processes, so both cores stay busy.
test: $(STAMP)
	$(PY_CACHE) $(BIN)/pytest -q -n 2

reproduce: $(STAMP)
	$(PY_CACHE) $(BIN)/gradlab compare configs/ --seeds 0,1,2 --check --jobs $(JOBS) --out runs
	$(PY_CACHE) $(BIN)/gradlab sweep configs/sweeps/tanh_phase.yaml --check --jobs $(JOBS) --out runs

lint: $(STAMP)
	$(BIN)/ruff check gradlab tests benchmarks
	$(BIN)/mypy gradlab

# `make bench BENCH_ARGS=--quick`: fewer steps and repetitions, to check the scripts run.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# Every sample output in README.md made again from real runs (docs/generate.py); after
# `make reproduce` the canonical blocks reuse its runs.
docs: $(STAMP)
	$(BIN)/python docs/generate.py

clean:
	rm -rf $(VENV) runs/*/ .pytest_cache
