# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv and install the locked versions when missing or out of date.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO := runs/demo

.PHONY: demo test test-fast bench quality lock clean

$(INSTALLED): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(INSTALLED)

# Demo photos -> `pvs run` (ingestion, baseline, the four phases, extraction) -> shard
# check -> the input pipeline's figure. Everything lands in runs/demo/.
# No usage telemetry from the temporary Prefect server (this network is closed anyway).
demo: export PREFECT_SERVER_ANALYTICS_ENABLED = false
demo: $(INSTALLED)
	$(BIN)/pvs demo-data $(DEMO)/images --products 500 --categories 16 --image-size 128
	$(BIN)/pvs run --config configs/demo.yaml --run-dir $(DEMO)
	$(BIN)/pvs verify $(DEMO)/data
	$(BIN)/pvs preview $(DEMO)/data --out $(DEMO)/preview.png

# Two pytest-xdist workers: most tests spend their time in one Python thread (tracing,
# eager steps, a server or a `pvs run` waiting), so two share 2 cores well. The reliability
# reference run's tests stay on one worker (tests/conftest.py), which makes that run once.
XDIST := -n 2 --dist loadgroup

test: $(INSTALLED)
	$(BIN)/python -m pytest $(XDIST)

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest $(XDIST) -m "not slow"

bench: $(INSTALLED)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/eager.py
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/retrieval_scale.py

# The recipe's score journey over 3 seeds, pretrained and from random weights (BENCHMARKS.md,
# "Retrieval quality"): six demo runs, about 18 minutes on 2 cores.
quality: $(INSTALLED)
	$(BIN)/python benchmarks/quality.py --chart docs/images/quality-journey.png

# Re-resolve the dependencies of pyproject.toml in a fresh environment and pin them.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet ".[test]"
	{ echo "# Exact versions for .venv (make lock rewrites this file): every machine installs the same set."; \
	  echo "# Python 3.11, Linux x86_64."; \
	  .venv-lock/bin/pip freeze --exclude product-visual-search; } > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) runs .pytest_cache
