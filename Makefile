# Two entry points for a fresh machine: `make demo` and `make test` (each creates .venv and installs first).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch/torchvision from the public registry: some machines' pip config prefers a local CPU-only torch
# build that the registry's torchvision cannot load ("operator torchvision::nms does not exist").
TORCH   := torch==2.13.0 torchvision==0.28.0
STAMP   := $(VENV)/.installed

.PHONY: install install-core demo test test-fast lint bench clean

# mmcv 2.1 (needed by mmseg 1.2 / mmdet 3.3, with its compiled ops) has no wheel for torch 2.13: it is
# compiled once (25-30 min on a fresh 2-core machine; pip caches the wheel), after torch, without build isolation, and
# its setup.py still imports pkg_resources (hence setuptools 80.9).
MMCV    := mmcv==2.1.0
PINS    := mlflow==3.17.2 "ray[tune,train]==2.60.0"
CORE    := $(VENV)/.installed-core

# What the default (torchvision) backend needs: torch, torchvision and fnatune. Nothing is compiled.
$(CORE): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e . $(PINS)
	touch $(CORE)

# Everything: the test tools, timm, and the OpenMMLab extra (the mm backend), mmcv compiled once.
$(STAMP): $(CORE)
	$(BIN)/python -m pip install -q setuptools==80.9.0 ninja
	MAX_JOBS=2 $(BIN)/python -m pip install -q --no-build-isolation $(MMCV)
	$(BIN)/python -m pip install -q -e '.[dev,mm]' $(PINS)
	touch $(STAMP)

install-core: $(CORE)

install: $(STAMP)

# The demo needs no compile: the tiny seg, det and pose flows at demo size on the torchvision backend (every demo
# starts fresh runs: a second `make demo` replaces the first one's run directories).
demo: install-core
	rm -rf runs/demo
	$(BIN)/fnatune run pipelines/demo/seg.yaml --run-dir runs/demo/seg
	$(BIN)/fnatune run pipelines/demo/det.yaml --run-dir runs/demo/det
	$(BIN)/fnatune run pipelines/demo/pose.yaml --run-dir runs/demo/pose
	$(BIN)/fnatune cost --arch search_spaces/archs/fna_retinanet.json --input 800x1088 --task det

# CI runs `make test`: the linter, then every test (the fast lane and the slow end-to-end ones)
test: install lint
	$(BIN)/python -m pytest -q

# the lane for developing: everything but the end-to-end pipelines and Ray clusters (about 8 minutes on 2 cores)
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/remap_speed.py
	$(BIN)/python benchmarks/search_step.py
	$(BIN)/python benchmarks/search_memory.py
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/tune_overhead.py
	$(BIN)/python benchmarks/search_quality.py
	$(BIN)/python benchmarks/backends.py

clean:
	rm -rf $(VENV) runs data mlflow.db mlartifacts
