# hrnet-quanteval developer entry points. CI (.ci/run) calls `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test selftest venv clean

venv: $(STAMP)

# The test environment, rebuilt whenever its pins change.
$(STAMP): requirements/test.txt app/pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/test.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e app
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

# The self-test on this machine, no Docker: synthetic set, oracle model, FP32 + W8A8 + W4A8.
selftest: $(STAMP)
	$(VENV)/bin/hrnet-quanteval selftest --use-cuda false --results-dir build/selftest

clean:
	rm -rf $(VENV) build .pytest_cache
