# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Everything else here is a building block of those two.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# MNIST: use ../shared/data when it is there (no-internet machines), else ./var/data,
# where torchvision downloads the files on first use.
DATA_DIR ?= $(if $(wildcard ../shared/data/MNIST/raw),$(abspath ../shared/data),$(abspath var/data))
export DATA_DIR

.PHONY: install demo demo-full dev test test-fast lint bench screenshots

$(BIN)/lora-service: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/lora-service  ## create .venv and install the project with its test extras

demo: install  ## embedded stack (SQLite + SQLite broker), then the quick comparison
	$(BIN)/lora-service demo --quick

demo-full: install  ## the full comparison (about 20 minutes on 2 cores)
	$(BIN)/lora-service demo

dev: install  ## API + one worker on the embedded default; Ctrl-C stops both
	$(BIN)/lora-service dev

test: install  ## the whole suite (real worker processes, Redis and Postgres on 127.0.0.1)
	$(BIN)/python -m pytest -q -ra

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_predict.py

README_SHOTS := jobs job compare playground models
screenshots: install  ## run the dashboard's browser tests, then copy their screenshots to docs/screenshots/
	$(BIN)/python -m pytest -q tests/ui/test_dashboard.py
	mkdir -p docs/screenshots
	cp $(addprefix var/screenshots/,$(addsuffix .png,$(README_SHOTS))) docs/screenshots/
