# Documented entry points: make demo, make test, make bench, make lint, make image.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint docs alert-rules deps system jaeger worker-deps r2-worker image clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

system:
	bash scripts/install-system.sh

jaeger:
	bash scripts/build-jaeger.sh

worker-deps:
	bash scripts/install-worker-deps.sh

deps: system $(STAMP) jaeger worker-deps

test: deps
	bash scripts/run-tests.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check agent tests bench scripts
	$(VENV)/bin/ruff format --check agent tests bench scripts
	$(VENV)/bin/mypy

bench: deps
	$(PY) -m bench

docs: $(STAMP)
	$(PY) scripts/gen_docs.py

# The shipped alert rules are `signal-sidecar alerts export` of the defaults, in a clean
# environment; tests/alerts/test_shipped_rules.py fails when they drift.
alert-rules: $(STAMP)
	env -i PATH="$$PATH" $(VENV)/bin/signal-sidecar alerts export \
		-o collector-config/prometheus-rules/signal-sidecar.rules.yml
	env -i PATH="$$PATH" $(VENV)/bin/signal-sidecar alerts export --format prometheus-operator \
		-o deploy/kubernetes/prometheusrule.yaml

r2-worker: worker-deps
	bash scripts/r2-worker.sh

# The sidecar and demo-app images (Docker, or podman where Docker is absent); prints their size.
image: system $(STAMP)
	$(PY) scripts/image.py

demo: deps
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) tools/bin r2-worker/node_modules .pytest_cache

# The property tests with far more inputs than `make test` draws (several minutes): see
# docs/operations.md, "Fuzzing the parsers".
.PHONY: fuzz
fuzz: deps
	HYPOTHESIS_PROFILE=fuzz bash scripts/run-tests.sh $(wildcard tests/*/test_*_properties.py)
