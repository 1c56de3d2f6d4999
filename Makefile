# Everyday targets. `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch on these machines; GPU users: `make install TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
# Extras the code uses so far (see pyproject.toml); `make install EXTRAS=all,dev` for everything.
EXTRAS ?= imaging,text,signal,train,evaluate,explain,deid,privacy,app,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
DEMO_OUT ?= demo_out
PYTEST_WORKERS ?= 2

.PHONY: install browser demo test test-slow test-gpu lint format typecheck bench bench-quick bench-gpu bench-dp docs-cli docs-api clean help

help:
	@echo "make demo       install, then run the whole pipeline on a synthetic cohort"
	@echo "make test       install, then run the default test suite"
	@echo "make test-slow  the slow tests (full-size demo, notebooks at full size)"
	@echo "make test-gpu   the GPU tests (needs CUDA)"
	@echo "make lint       ruff + mypy"
	@echo "make bench-quick  every benchmark at small CPU sizes (JSON lines on stdout)"
	@echo "make bench-gpu    every benchmark at full size on CUDA"
	@echo "make docs-cli     regenerate docs/cli.md; make docs-api regenerates docs/api.md"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/clinfuse demo --out $(DEMO_OUT)

# System tools the tests use: Debian's Chromium for the headless-browser tests (Playwright
# cannot download its own here) and the Tesseract OCR engine for `clinfuse deid --clean-pixels`.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v tesseract >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO apt-get install -y -qq chromium tesseract-ocr >/dev/null; }

test: install browser
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

test-slow: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow -q

test-gpu: install
	$(BIN)/python -m pytest -m gpu -q

lint: install
	$(BIN)/ruff check clinfuse privacy app tests benchmarks
	$(BIN)/ruff format --check clinfuse privacy app tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix clinfuse privacy app tests benchmarks
	$(BIN)/ruff format clinfuse privacy app tests benchmarks

typecheck: install
	$(BIN)/mypy

docs-cli: install
	$(BIN)/typer clinfuse.cli utils docs --name clinfuse --output docs/cli.md

bench: bench-quick

bench-quick: install
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks --quick --device cpu

bench-gpu: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks --device cuda --out benchmarks/results-gpu.jsonl

bench-dp: install
	$(BIN)/python benchmarks/bench_dp.py

docs-api: install
	$(BIN)/python docs/gen_api.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
