# The two commands a newcomer needs: `make demo` and `make test`. Each creates .venv
# (with python3 >= 3.11) and installs what it needs the first time it runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export JAX_PLATFORMS ?= cpu

.PHONY: demo test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/quickstart.py

# The whole suite: lint, the tests (which run every docs snippet and every example's
# --smoke mode), the core tests once more on JAX's own evaluator (LAZYMOD_EVALUATOR=jax,
# the path the fast evaluator falls back to), and a strict build of the documentation
# site. The tests run in one process per core, at most 4.
CORE_TESTS := tests/test_init.py tests/test_seeds.py tests/test_engine.py tests/test_errors.py \
	tests/test_restore.py tests/test_summary.py tests/test_stateful.py tests/test_threads.py \
	tests/test_nn.py tests/test_properties.py tests/test_golden.py tests/test_cache.py

test: $(VENV)/.installed-dev lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4
	LAZYMOD_EVALUATOR=jax $(BIN)/python -m pytest -q -n auto --maxprocesses 4 $(CORE_TESTS)
	$(MAKE) docs

docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check lazymod tests examples benchmarks
	$(BIN)/ruff format --check lazymod tests examples benchmarks

clean:
	rm -rf $(VENV)
