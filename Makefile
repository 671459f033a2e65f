# Every target runs inside .venv, which `make setup` builds once (a stamp file makes reruns instant).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# This machine has a CPU wheel of torch 2.13.0 on disk; on a GPU box pip takes the usual CUDA build.
# A torch already importable from the venv that satisfies pyproject's range is kept.
TORCH_SPEC ?= torch==2.13.0
# Triton ships with CUDA builds of torch; on a CPU-only machine the tests run model/kernels in Triton's
# interpreter, which needs 3.9+ with numpy 2 (3.6's interpreter fails on loop bounds).
TRITON_SPEC ?= triton==3.9.0

# Pipeline variables (see README): DATA="paths or globs", NAME=, SOURCE=, TOKENIZER=, VOCAB=, ARGS=
DATA ?=
NAME ?=
SOURCE ?=
TOKENIZER ?=
VOCAB ?=
ARGS ?=
# CONFIG= (empty) passes no --config: the run takes bin/train.py's own defaults, which leave max_steps
# and epochs for ARGS to set.
CONFIG ?= configs/tiny.yml
NGPU ?=

# Quoted: NAME="my store" or a TOKENIZER path with a space is one value (DATA is split by bin/prepare.py).
PIPE_ARGS := $(if $(DATA),--data "$(DATA)") $(if $(NAME),--name "$(NAME)") $(if $(SOURCE),--source $(SOURCE)) \
	$(if $(TOKENIZER),--tokenizer "$(TOKENIZER)") $(if $(VOCAB),--vocab-size $(VOCAB))
# torchrun sets OMP_NUM_THREADS=1 per process where it is unset and it starts more than one, with a
# four-line banner saying so each launch: set here, the same 1 without the banner (a value in the
# environment still wins). Not for NGPU=1, which torchrun leaves on all cores.
LAUNCH := $(if $(NGPU),$(if $(filter-out 1,$(NGPU)),OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} )$(VENV)/bin/torchrun \
	--standalone --nproc_per_node=$(NGPU),$(PY))

.PHONY: setup test lint prepare tokenizer train plot sample demo gpu-check gpu-test gpu-wheels gpu-session bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	@$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q "$(TRITON_SPEC)" || \
		echo "no Triton wheel for this platform: the model/kernels tests will skip"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -n 2 -q

tokenizer: setup
	$(PY) bin/tokenizer.py $(PIPE_ARGS) $(ARGS)

prepare: setup
	$(PY) bin/prepare.py $(PIPE_ARGS) $(ARGS)

# With NGPU, the config is checked once first: under torchrun each rank would print the same error,
# followed by the launcher's own traceback.
TRAIN_ARGS = $(if $(CONFIG),--config "$(CONFIG)") $(ARGS)
train: setup
	$(if $(NGPU),WORLD_SIZE=$(NGPU) $(PY) bin/train.py --check $(TRAIN_ARGS) &&) $(LAUNCH) bin/train.py $(TRAIN_ARGS)

plot: setup
	$(PY) bin/plot.py $(ARGS)

sample: setup
	$(PY) bin/sample.py $(ARGS)

demo: setup
	$(PY) bin/demo.py $(ARGS)

gpu-check:
	bash bench/gpu_check.sh $(ARGS)

# On a GPU machine (its own python3 and torch; no venv needed): every test that does something
# different with CUDA, the model's Triton kernels compiled rather than interpreted among them. The
# slowest file (compiled training, ~40 s on an H100) last: a time limit cuts it rather than the rest.
GPU_TESTS := tests/model/test_kernels.py tests/model/test_fused_loss.py tests/model/test_attention_backend.py \
	tests/model/test_generate.py tests/bin/test_sample.py tests/bin/test_eval.py tests/train/test_sampler.py \
	tests/train/test_trainer_gpu.py
# The image of the lent machines lacks a few of our dependencies: `make gpu-wheels` here, carry .whl.
GPU_PY = $$(test -x $(PY) && echo $(PY) || echo python3)
gpu-test:
	@$(GPU_PY) -c "import torch; torch.cuda.is_available() or print('warning: \
	no CUDA device: the GPU-only tests skip, and only the CPU halves of these files run')"
	site=$$(bash bench/gpu_wheels.sh install $(GPU_PY)) && PYTHONPATH=$(CURDIR)$${site:+:$$site} $(GPU_PY) \
		-m pytest -q -p no:cacheprovider -o addopts="" $(GPU_TESTS)

gpu-wheels:
	bash bench/gpu_wheels.sh download

# All of a lent GPU's checks in one call of the device tool: gpu-check, gpu-test, bench/sample.py.
gpu-session:
	bash bench/gpu_session.sh $(ARGS)

bench: setup
	$(PY) bench/prepare.py
	$(PY) bench/train.py
	$(PY) bench/loss.py
	$(PY) bench/sample.py

clean:
	rm -rf data_cache runs
