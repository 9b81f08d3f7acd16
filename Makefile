# blastscope: two commands do all set-up on a fresh machine.
#   make demo   - create .venv, install, fetch pretrained weights, run the demo pipeline
#   make test   - create .venv, install, run the test suite (under 10 minutes on 2 CPU cores)
#   make bench  - opt-in long runs and benchmarks (pytest -m slow, training/inference speed, whole
#                 processes, and the paper arm of 'blastscope reproduce': tens of minutes)
#   make bench-shifts - PBC classifier under fixed lab shifts (about 1 hour on 2 shared cores)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.blastscope-installed
export PYTHONUNBUFFERED := 1

.PHONY: all venv weights browser demo lint test bench bench-finder bench-shifts train-finder-loso clean

all: test

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision: pinned, installed from this machine's disk where available
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev,onnx,openvino,gui,timm]'
	@touch $(STAMP)

venv: $(STAMP)

weights: venv
	$(BIN)/blastscope weights fetch --all

# Headless Chromium renders report.html in one test; best effort (root + apt), else that test skips.
browser:
	-@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing Debian chromium for the report rendering test" && \
	  timeout 300 sh -c 'apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1'; } || \
	  echo "chromium not installed: the report rendering test will be skipped"

demo: weights
	$(BIN)/blastscope demo --out demo_out

lint: venv
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

test: weights browser lint
	$(BIN)/python -m pytest -q -m "not slow"

bench: weights
	$(BIN)/python -m pytest -q -m slow -s
	$(BIN)/python scripts/bench.py --paper

# White-cell finders on TXL-PBC per source (stain finder: test split and all images; add
# --detector SOURCE=PATH for leave-one-source-out detectors). About 5 minutes on 2 CPU cores.
TXL ?= ../shared/data/txl-pbc
bench-finder: venv
	$(BIN)/python scripts/bench_finder.py --root $(TXL) --out bench_out

# One leave-one-source-out detector (HELD_OUT=BCCD|BCD|PBC|Raabin-WBC), small and short enough for
# this CPU: yolov3-tiny, 320 px, 3 epochs on the other three sources' train (best by their val).
HELD_OUT ?= Raabin-WBC
LOSO_EPOCHS ?= 3
LOSO_IMGSZ ?= 320
train-finder-loso: weights
	$(BIN)/blastscope import $(TXL) --out runs/txl/manifest.csv
	$(BIN)/python scripts/loso_manifest.py runs/txl/manifest.csv --held-out $(HELD_OUT) --root $(TXL) --out runs/txl/loso-$(HELD_OUT).csv
	$(BIN)/blastscope train --task detect --data runs/txl/loso-$(HELD_OUT).csv --model yolov3-tiny \
	  --epochs $(LOSO_EPOCHS) --imgsz $(LOSO_IMGSZ) --out runs/loso-$(HELD_OUT) --exist-ok
	$(BIN)/python scripts/bench_finder.py --root $(TXL) --finders detector --splits test,all --sources $(HELD_OUT) \
	  --detector $(HELD_OUT)=runs/loso-$(HELD_OUT)/best.pt --out runs/loso-$(HELD_OUT)

# PBC under lab shifts (scripts/bench_shifts.py): plain vs the default augmentation (160 px, 8 epochs,
# as the README's table), then adaptation (AdaBN, TENT, class prior) and the finder in the loop
bench-shifts: weights
	$(BIN)/python scripts/bench_shifts.py --imgsz 160 --epochs 8 --variants plain,default --adapt 0,0.5,1 --tent --prior --adapt-levels 0,3 --out bench_out
	$(BIN)/python scripts/bench_shifts.py --imgsz 160 --epochs 8 --variants plain,default --test-boxes finder --out bench_out/finder

clean:
	rm -rf demo_out .pytest_cache
