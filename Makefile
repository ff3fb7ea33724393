# The two commands of the quick start are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench dist clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/tidings demo $(DEMO_ARGS)

# The benchmarks' own tools (wrk) are installed by the project's script first.
bench: install
	bash scripts/install-bench-tools.sh
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# A wheel and an sdist in dist/.
dist: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache
