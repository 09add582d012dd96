# The two commands of the README's Quick start: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup bench accuracy clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[trace,dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/memplan train meta-llama/Llama-3.1-8B --batch 1 --seq 2048 --precision bf16-mixed --optimizer adamw --gpu H100-SXM

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

accuracy: $(STAMP)
	$(BIN)/python scripts/accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
