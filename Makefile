# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv from nothing first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch and the Triton whose interpreter the kernel tests use. On a CUDA machine, override:
#   make setup TORCH_SPEC="torch" TRITON_SPEC="triton"
TORCH_SPEC  ?= torch==2.13.0
TRITON_SPEC ?= triton==3.6.0
STAMP := $(VENV)/.installed

.PHONY: setup test test-all demo bench gpu-check clean

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*.c)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The suite CI runs: everything but the tests marked slow (about 5 minutes on 2 cores). `test-all` adds the slow
# ones (the full HumanEval+/MBPP+ canonical runs, the demo, SIGKILL in every stage, 2-rank FSDP2 with 8-bit AdamW,
# loading a 1.5 GB checkpoint on two ranks): about 12 minutes on 2 cores.
test: setup
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests

test-all: setup
	$(BIN)/python -m pytest -q -n 2 tests

demo: setup
	$(BIN)/python -m wizardcoder demo

bench: setup
	$(BIN)/python -m bench.run_all

# On a GPU machine, with its own python3 and torch (no venv, no network): every GPU test and GPU benchmark with its
# peer, under 8 minutes; figures and logs under $$OUT (or bench/out/gpu).
gpu-check:
	python3 -m bench.gpu_check

clean:
	rm -rf $(VENV) build *.egg-info wizardcoder/*.so demo_out
