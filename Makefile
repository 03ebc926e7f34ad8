# One-command entry points. `make test` and `make demo` install first when .venv is missing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch: a build that runs on this machine's CPU and imports next to torchvision (see README).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

DATASET ?= csv
ROOT ?= ../shared/data/clive-dev
OUT ?= shards/$(DATASET)
CONFIG ?= configs/annotate/offline.yaml
PART ?= 0/1
# extra `key=value` config overrides for annotate, e.g. ARGS='segmenter.checkpoint=/ckpt/sam_vit_h.pth'
ARGS ?=

.PHONY: install test test-fast demo model annotate bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q tests

# the edit-test loop: import contracts and every test not marked slow
test-fast: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(BIN)/python -m demo

# Retrain a shipped model (rsfiqa/weights/) from clive-dev minus the demo photos, seed 0.
CLIVE ?= ../shared/data/clive-dev
MODEL ?= clive-offline
model: $(STAMP)
	$(BIN)/python scripts/make_model.py --clive $(CLIVE) --name $(MODEL)

annotate: $(STAMP)
	$(BIN)/python -m annotate --dataset $(DATASET) --root $(ROOT) --out $(OUT) --config $(CONFIG) --part $(PART) $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/annotation.py

clean:
	rm -rf $(VENV) .pytest_cache
