# Two entry points for a fresh machine: `make demo` and `make test` (each creates .venv and installs first).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch/torchvision from the public registry: some machines' pip config prefers a local CPU-only torch
# build that the registry's torchvision cannot load ("operator torchvision::nms does not exist").
TORCH   := torch==2.13.0 torchvision==0.28.0
STAMP   := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fnatune spaces mbv2_det
	$(BIN)/fnatune remap --seed mobilenet_v2 --space mbv2_det --arch supernet --out runs/demo/supernet
	$(BIN)/fnatune remap --seed mobilenet_v2 --arch search_spaces/archs/fna_retinanet.json --out runs/demo/fna_retinanet
	$(BIN)/fnatune cost --arch search_spaces/archs/fna_retinanet.json --input 800x1088
	$(BIN)/fnatune cost --arch search_spaces/archs/mbv2_retinanet.json --input 800x1088

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/remap_speed.py

clean:
	rm -rf $(VENV) runs
