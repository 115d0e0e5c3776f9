# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PRESET ?=
DATASET ?= stanfordnlp/imdb
OUTPUT_DIR ?= runs/demo
BIN := $(VENV)/bin

.PHONY: install demo test

# torch first and pinned: an unpinned resolve pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python scripts/train.py $(if $(PRESET),--preset $(PRESET)) --dataset $(DATASET) --output_dir $(OUTPUT_DIR)
	$(BIN)/python scripts/demo.py --output_dir $(OUTPUT_DIR)

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest
