# The two commands of the README's Quick start: `make run` and `make test`.
#
# `make run` installs only what the CLI (and, once the `web` extra exists, the web page) needs:
# memplan's core has no dependencies, so this takes seconds, not the minutes torch takes.
# `make test` installs everything the tests need (the trace engine's torch and transformers,
# the linters, the web and plot extras, Debian's chromium for the browser tests) into the same
# .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-installed
STAMP := $(VENV)/.installed
# the web page's extra, where pyproject.toml defines one (memplan serve)
RUN_EXTRAS := $(shell grep -q '^web *=' pyproject.toml && echo '[web]')

# The browser tests drive Debian's chromium (Playwright cannot download its own offline).
CHROMIUM := /usr/bin/chromium

.PHONY: run serve test lint setup browser screenshots bench accuracy readme clean

# The venv starts without pip (ensurepip costs more than installing memplan); the
# interpreter's own pip installs into it. `make test` puts pip in for the developer.
$(BIN)/python:
	$(PY) -m venv --without-pip $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(PY) -m pip -q --python $(BIN)/python install -e '.$(RUN_EXTRAS)'
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PY) -m pip -q --python $(BIN)/python install --upgrade pip
	$(BIN)/pip install -q -e '.[trace,dev,hub,web,plot]'
	touch $(STAMP) $(RUN_STAMP)

setup: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/memplan train meta-llama/Llama-3.1-8B --qlora --gpu RTX-4090

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

# the web page (the run venv has the web extra: no torch needed)
serve: $(RUN_STAMP)
	$(BIN)/memplan serve --open

browser:
	@test -x $(CHROMIUM) || { if [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q chromium; \
	else echo "make: $(CHROMIUM) is missing: apt-get install -y chromium (as root)"; fi; }

test: $(STAMP) lint browser
	$(BIN)/python -m pytest

# The README's picture of the page, taken by the browser tests.
screenshots: $(STAMP) browser
	MEMPLAN_SCREENSHOTS=docs/img $(BIN)/python -m pytest -q tests/test_web_browser.py

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

accuracy: $(STAMP)
	$(BIN)/python scripts/accuracy.py

readme: $(RUN_STAMP)
	$(BIN)/python scripts/readme_output.py --write

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
