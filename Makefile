# make test: set up .venv (Python >= 3.12, found by tools/find_python.sh) and run the test suite.
# make bench: run the benchmarks in benchmarks/ (JSON lines on stdout).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test bench venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@python=$$(sh tools/find_python.sh) || exit 1; \
	  echo "using $$python"; \
	  [ -x $(PY) ] || "$$python" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt -e .
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/scan.py

clean:
	rm -rf $(VENV) .pytest_cache
