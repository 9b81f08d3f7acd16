# blastscope: two commands do all set-up on a fresh machine.
#   make demo   - create .venv, install, fetch pretrained weights, run the demo pipeline
#   make test   - create .venv, install, run the test suite (under 10 minutes on 2 CPU cores)
#   make bench  - opt-in long runs and benchmarks (pytest -m slow, training/inference speed)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.blastscope-installed
export PYTHONUNBUFFERED := 1

.PHONY: all venv weights demo test bench clean

all: test

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision: pinned, installed from this machine's disk where available
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev,onnx,gui,timm]'
	@touch $(STAMP)

venv: $(STAMP)

weights: venv
	$(BIN)/blastscope weights fetch --all

demo: weights
	$(BIN)/blastscope demo --out demo_out

test: weights
	$(BIN)/python -m pytest -q -m "not slow"

bench: weights
	$(BIN)/python -m pytest -q -m slow -s
	$(BIN)/python scripts/bench.py

clean:
	rm -rf demo_out .pytest_cache
