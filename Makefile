# hrnet-quanteval developer entry points. CI (.ci/run) calls `make test`, `make test-legacy`, `make lint` and
# `make selftest`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LEGACY_VENV ?= .venv-legacy
LEGACY_STAMP := $(LEGACY_VENV)/.installed
# Python 3.8 for the legacy stack's interpreter: pyenv's, else one on PATH
PYTHON38 ?= $(shell p=$$(pyenv prefix 3.8 2>/dev/null | head -n 1); if [ -x "$$p/bin/python3.8" ]; then echo "$$p/bin/python3.8"; else command -v python3.8; fi)
LINT_VENV ?= .venv-lint
LINT_STAMP := $(LINT_VENV)/.installed
ARGS ?=
# The project's shared fixtures (upstream sources, real photographs): ../shared beside the checkout, or SHARED=DIR
SHARED ?= $(firstword $(wildcard shared ../shared))
HRNET_COMMIT ?= 00d7bf72f56382165e504b10ff0dddb82dca6fd2
HRNET_BUNDLE ?= $(wildcard $(SHARED)/third_party/hrnet-00d7bf72/HRNet-Human-Pose-Estimation.bundle)
HRNET_REPO ?= $(if $(HRNET_BUNDLE),$(abspath $(HRNET_BUNDLE)),https://github.com/HRNet/HRNet-Human-Pose-Estimation.git)
HRNET_SRC ?= build/hrnet-src
MAIN_LIB := build/hrnet-lib
LEGACY_LIB := build/hrnet-lib-legacy
AIMET122_SRC ?= $(wildcard $(SHARED)/third_party/aimet-1.22.2/python)
TEST_ENV = HRNET_SRC=$(abspath $(HRNET_SRC)) HRNET_QUANTEVAL_SHARED=$(abspath $(SHARED))
LEGACY_ENV = $(TEST_ENV) PYTHONPATH=$(CURDIR)/tests/aimet122/standin AIMET122_PYTHON_SRC=$(abspath $(AIMET122_SRC)) \
	HRNET_LIB=$(abspath $(LEGACY_LIB))

.PHONY: test test-legacy lint selftest reference-lib image eval venv clean shared

# The suites need the shared fixtures; say where they are looked for rather than failing test by test.
shared:
	@if [ -z "$(SHARED)" ] || [ ! -d "$(SHARED)/third_party" ]; then \
	  echo "make: the shared fixtures (third_party/, data/) are not at ./shared or ../shared; pass SHARED=DIR" >&2; exit 1; fi

venv: $(STAMP)

# The test environment, rebuilt whenever its pins change.
$(STAMP): requirements/test.txt app/pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/test.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e app
	touch $@

test: shared $(STAMP) $(MAIN_LIB)/HRNET_COMMIT
	$(TEST_ENV) HRNET_LIB=$(abspath $(MAIN_LIB)) $(PY) -m pytest -q -rs

# The legacy stack's interpreter and libraries (Python 3.8, torch 1.9.1, numpy 1.23.5: requirements/legacy.txt,
# the file the Dockerfile's legacy target reads; requirements/legacy-test.txt adds what AIMET 1.22.2's Python
# imports). AIMET 1.22.2 is not on PyPI: its own Python sources run with our stand-ins for its compiled parts
# (AIMET122_SRC, LEGACY_ENV). First a compile of the whole package by Python 3.8 itself.
$(LEGACY_STAMP): requirements/legacy.txt requirements/legacy-test.txt app/pyproject.toml
	@if [ -z "$(PYTHON38)" ]; then echo "make test-legacy: no Python 3.8 here (pyenv install 3.8, or PYTHON38=/path/to/python3.8)" >&2; exit 1; fi
	rm -rf $(LEGACY_VENV)
	$(PYTHON38) -m venv $(LEGACY_VENV)
	$(LEGACY_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/legacy.txt pytest==8.3.5
	$(LEGACY_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/legacy-test.txt
	$(LEGACY_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e app
	touch $@

# AIMET 1.22.2's own Python sources (../shared/third_party, a test fixture) with our stand-ins for its compiled
# parts (tests/aimet122/standin): every AIMET test runs against 1.22.2's QuantizationSimModel here.
test-legacy: shared $(LEGACY_STAMP) $(LEGACY_LIB)/HRNET_COMMIT
	$(LEGACY_VENV)/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 8), sys.version'
	$(LEGACY_VENV)/bin/python -m compileall -q -f app/hrnet_quanteval
	$(LEGACY_ENV) $(LEGACY_VENV)/bin/python -m pytest -q -rs

# HRNet's patched lib for the reference engine, `parity` and the parity tests, built like the images build it,
# one per interpreter (its NMS extension is compiled for that Python): build/hrnet-lib for .venv (make test),
# build/hrnet-lib-legacy for .venv-legacy (make test-legacy). The source is HRNET_SRC, a checkout of the pinned
# commit, else build/hrnet-src fetched from HRNET_REPO: the git bundle in ../shared/third_party when there is one
# (CI, machines without GitHub), else GitHub. fetch-hrnet.sh fails unless HEAD is exactly HRNET_COMMIT.

$(HRNET_SRC)/.git:
	scripts/fetch-hrnet.sh "$(HRNET_REPO)" $(HRNET_COMMIT) $(HRNET_SRC)

$(MAIN_LIB)/HRNET_COMMIT: $(STAMP) $(HRNET_SRC)/.git $(wildcard patches/*.patch) scripts/prepare-hrnet-lib.sh
	HRNET_COMMIT=$(HRNET_COMMIT) PYTHON=$(abspath $(PY)) scripts/prepare-hrnet-lib.sh $(HRNET_SRC) $(MAIN_LIB)

$(LEGACY_LIB)/HRNET_COMMIT: $(LEGACY_STAMP) $(HRNET_SRC)/.git $(wildcard patches/*.patch) scripts/prepare-hrnet-lib.sh
	HRNET_COMMIT=$(HRNET_COMMIT) PYTHON=$(abspath $(LEGACY_VENV)/bin/python) scripts/prepare-hrnet-lib.sh $(HRNET_SRC) $(LEGACY_LIB)

reference-lib: $(MAIN_LIB)/HRNET_COMMIT

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
	rm -rf $(VENV) $(LEGACY_VENV) $(LINT_VENV) build .pytest_cache
