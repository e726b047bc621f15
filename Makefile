# Set-up and everyday commands. Each target creates .venv on first use and installs what it
# needs into it: the demo the package alone, the others the tools they run as well.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
#: Where the demo keeps its SQLite database; `make reset` deletes it.
DEMO_INSTANCE := $(CURDIR)/instance

# The extras (see setup.cfg) of each install; one without any installs the package alone. The
# demo shows its Prometheus metrics at /metrics.
EXTRAS_demo := metrics
EXTRAS_test := test,postgres,celery,metrics,docs
EXTRAS_lint := lint,postgres,celery,metrics,otel
EXTRAS_docs := docs
EXTRAS_bench := postgres,celery,metrics
# Packages an install needs besides the package's extras: the benchmark's baseline posts with
# requests, as a host writing webhooks by hand would; the screenshots drive the system's
# Chromium with Playwright (which downloads no browser when installed with pip).
PACKAGES_bench := requests
PACKAGES_screenshots := playwright requests

.PHONY: demo reset test lint docs screenshots fuzz bench bench-quick clean

# One stamp per install, redone when the package's metadata changes.
$(VENV)/.installed-%: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.$(if $(EXTRAS_$*),[$(EXTRAS_$*)])'
	$(if $(PACKAGES_$*),$(BIN)/python -m pip install --quiet $(PACKAGES_$*))
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/python -m example_app --instance-path $(DEMO_INSTANCE)

reset:
	rm -f $(DEMO_INSTANCE)/example_app.sqlite3 $(DEMO_INSTANCE)/example_app.sqlite3-*

# The suite in TEST_WORKERS processes (a test file to a process), then alone the tests that
# restart the services the others share.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not exclusive" -n $(TEST_WORKERS) --dist loadfile
	$(BIN)/python -m pytest -m exclusive

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fuzz: $(VENV)/.installed-test
	KAIZEN_WEBHOOKS_FUZZ_EXAMPLES=$${KAIZEN_WEBHOOKS_FUZZ_EXAMPLES:-1000} $(BIN)/python -m pytest -q tests/test_fuzz.py

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m bench --quick

docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

# The portal's pictures in docs/_static/portal/, taken from the demo in headless Chromium.
screenshots: $(VENV)/.installed-screenshots
	$(BIN)/python docs/screenshots.py

clean: reset
	rm -rf $(VENV) docs/_build build *.egg-info .pytest_cache .mypy_cache .ruff_cache
