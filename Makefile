# The two commands of the README's Quick start: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: run serve test lint setup browser screenshots bench accuracy clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[trace,dev,web,plot]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/memplan train meta-llama/Llama-3.1-8B --batch 1 --seq 2048 --precision bf16-mixed --optimizer adamw --gpu H100-SXM

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

# The browser tests drive Debian's chromium (Playwright cannot download its own offline).
browser:
	@test -x $(CHROMIUM) || { if [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q chromium; \
	else echo "make: $(CHROMIUM) is missing: apt-get install -y chromium (as root)"; fi; }

test: $(STAMP) lint browser
	$(BIN)/python -m pytest

serve: $(STAMP)
	$(BIN)/memplan serve --open

# The README's picture of the page, taken by the browser tests.
screenshots: $(STAMP) browser
	MEMPLAN_SCREENSHOTS=docs/img $(BIN)/python -m pytest -q tests/test_web_browser.py

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

accuracy: $(STAMP)
	$(BIN)/python scripts/accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
