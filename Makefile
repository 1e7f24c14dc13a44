# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv and installs if needed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install test test-fast demo study bench gpu-check clean help

help:
	@echo "make demo   - train/evaluate the comparison on the embedded synthetic haze set (CPU, offline)"
	@echo "make test   - run the test suite (CPU, offline; every documented command runs too)"
	@echo "make test-fast - the tests not marked slow (a few minutes): while you work"
	@echo "make study  - does the CLIP prior help? the prior study of each CLIP-guided net, shortened (CPU, offline,"
	@echo "              random tiny CLIP: it shows the machinery, its prior carries no information)"
	@echo "make bench  - params / MACs / latency / memory of every generator -> outputs/bench/"
	@echo "make gpu-check - install, then check the GPU path (Triton kernels, CUDA tests, throughput) -> outputs/gpu-check/"

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,cluster]"
	touch $(STAMP)

install: $(STAMP)

# One test worker per CPU the process may use (pytest-xdist; "logical": every vCPU, where "auto" may count
# physical cores only); TEST_WORKERS=0 runs the tests in this process.
TEST_WORKERS ?= logical
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: $(STAMP)
	$(PYTEST) --durations=15

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

demo: $(STAMP)
	$(BIN)/python -m clipdehaze.demo

study: $(STAMP)
	$(BIN)/python -m clipdehaze.study

bench: $(STAMP)
	$(BIN)/clipdehaze-bench

# Installs by itself (on top of a GPU machine's own CUDA PyTorch when it has one): see scripts/gpu-check.sh.
gpu-check:
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/gpu-check.sh

clean:
	rm -rf outputs multirun .pytest_cache
