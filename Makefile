# Two entry points: `make study` runs the study in params.yaml, `make test` runs the tests.
# Each creates .venv on first use and installs segkd with pinned dependencies (requirements.lock).
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
CORES ?= all
# pytest-xdist workers: each test file runs whole on one worker, so its module fixtures are built once
TEST_WORKERS ?= 2

.PHONY: study test bench clean-results

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

study: $(VENV)/.installed
	snakemake --cores $(CORES)

test: $(VENV)/.installed
	pytest -n $(TEST_WORKERS) --dist loadfile

bench: $(VENV)/.installed
	$(PY) benchmarks/models.py

clean-results:
	rm -rf runs results
