# Two entry points: `make demo` (the main job on the default model) and `make test` (the suite).
# Each sets up what it needs: a virtualenv in .venv, the packages, and (on first use) the base model.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first: the CPU build of 2.13.0; any other torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/slmtune models fetch smollm2-135m-instruct
	$(BIN)/python examples/demo/demo.py

# The suite on TEST_WORKERS pytest-xdist workers (tests/conftest.py says how the work is shared), then the tests
# marked serial alone (they restart a service the others use); the exit status is the first failure's.
TEST_WORKERS ?= 2
test: setup
	rc=0; $(BIN)/python -m pytest -q tests -n $(TEST_WORKERS) --dist loadscope -m "not serial" --durations=30 || rc=$$?; \
	$(BIN)/python -m pytest -q tests -m serial --durations=5 || { s=$$?; [ $$rc -ne 0 ] || rc=$$s; }; exit $$rc

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports

test-fast: setup
	$(BIN)/python -m pytest -q tests -n $(TEST_WORKERS) --dist loadscope -m "not real_model and not serial"

clean:
	rm -rf $(VENV) runs .pytest_cache
