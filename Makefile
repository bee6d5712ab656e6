VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,embedded,otlp]'
	touch $(STAMP)

run: $(STAMP)
	@echo "aioflow dev on http://127.0.0.1:8080 -- try:"
	@echo "  curl -d '{\"name\": \"world\"}' -H 'content-type: application/json' 'http://127.0.0.1:8080/flow/hello?wait=5'"
	$(VENV)/bin/aioflow dev examples/hello.py:app --port 8080

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples tools
	$(VENV)/bin/ruff format --check src tests benchmarks examples tools
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) tools/sizes.py

bench: $(STAMP)
	$(PY) benchmarks/run.py --repeat 3

clean:
	rm -rf $(VENV) .aioflow .pytest_cache .mypy_cache .ruff_cache
