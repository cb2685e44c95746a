# pyro-dturbo: `make demo` and `make test` each set up .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test test-float32 bench notebooks lint install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: the CPU build on disk, never a CUDA download.
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev,flower]"
	touch $(STAMP)

install: $(STAMP)

# The regression demo (< 2 minutes), then every federated method on the small digits config
# (about 1.5 minutes on two cores; configs/federated_digits_demo.yaml says what was measured).
demo: $(STAMP)
	$(PY) -m pyro_dturbo.cli demo --out results/demo
	$(PY) -m pyro_dturbo.cli federate --config configs/federated_digits_demo.yaml \
		--out results/federated_demo --no-progress --fresh

# The suite in float64 (the default), then the core tests once more in float32 (tests marked
# float64 are skipped there, with their reason).
test: $(STAMP)
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-float32

test-float32: $(STAMP)
	DTURBO_TEST_DTYPE=float32 $(PY) -m pytest -q tests/ops tests/models tests/inference

# The commands behind the README's figures.
bench: $(STAMP)
	$(PY) benchmarks/regression.py --svi-steps 1000 --threads 1
	$(PY) benchmarks/regression.py --only-nuts --nuts-obs 40 --threads 1
	$(PY) benchmarks/message_passing.py
	$(PY) benchmarks/compress.py --timing --alexnet

# Re-execute the tutorials at full size, in place (they are committed with their outputs).
notebooks: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) notebooks/execute.py

lint: $(STAMP)
	$(PY) -m ruff check pyro_dturbo tests benchmarks notebooks
	$(PY) -m mypy pyro_dturbo

clean:
	rm -rf $(VENV) build *.egg-info
