# hrnet-quanteval developer entry points. CI (.ci/run) calls `make test`, `make lint` and `make selftest`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINT_VENV ?= .venv-lint
LINT_STAMP := $(LINT_VENV)/.installed
ARGS ?=

.PHONY: test lint selftest image eval venv clean

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

$(LINT_STAMP): requirements/lint.txt
	rm -rf $(LINT_VENV)
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/lint.txt
	touch $@

# Static checks of the Python code, the Dockerfile, the shell scripts, the compose file and the workflow.
lint: $(LINT_STAMP)
	$(LINT_VENV)/bin/ruff check app tests
	$(LINT_VENV)/bin/hadolint Dockerfile
	$(LINT_VENV)/bin/shellcheck entrypoint.sh scripts/*.sh .ci/run
	$(LINT_VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(LINT_VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# Both images (needs Docker; not available on the development machines).
image:
	APP_GIT_COMMIT=$$(git rev-parse HEAD) docker compose build

# The main job in the legacy image: make eval ARGS="--default-param-bw 4" (COCO_DIR=/path/to/coco).
eval:
	mkdir -p results
	docker compose run --rm eval $(ARGS)

clean:
	rm -rf $(VENV) $(LINT_VENV) build .pytest_cache
