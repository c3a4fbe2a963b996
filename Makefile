# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv from nothing first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch and the Triton whose interpreter the kernel tests use. On a CUDA machine, override:
#   make setup TORCH_SPEC="torch" TRITON_SPEC="triton"
TORCH_SPEC  ?= torch==2.13.0
TRITON_SPEC ?= triton==3.6.0
# The exact versions the suite last passed with (`make lock` rewrites it from a venv that passed). `make setup` and
# so CI install through it, so a fresh machine gets what CI got; `make setup LOCK=` installs without it.
LOCK   ?= requirements.lock
PIN    := $(if $(LOCK),-c $(LOCK))
STAMP := $(VENV)/.installed
LATEST := .venv-latest

.PHONY: setup lock test test-all test-latest demo bench gpu-check clean

$(STAMP): setup.py pyproject.toml $(LOCK) $(wildcard csrc/*.c)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIN) "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	$(BIN)/python -m pip install -q $(PIN) -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Rewrite the lock from the set-up venv: run it after the suite passed there (e.g. after `make test-latest` went
# green, `make lock VENV=.venv-latest`).
lock:
	$(BIN)/python -m pip freeze --exclude-editable --all | grep -v -E '^(pip|setuptools|wheel)==' \
	  | sed '1i # The versions `make test` last passed with; `make lock` rewrites this file (see the Makefile).' \
	  > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

# The newest releases of everything (torch included: here that is a multi-GB CUDA build, capped by the machine's pip
# configuration), in a separate venv, without the lock: an upstream break shows up here, as a failure on our side,
# before it reaches a fresh machine. What it found last is in the README ("Dependencies").
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade "$(TORCH_SPEC)" triton
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST)/bin/python -m pip list --format freeze | grep -i -E '^(torch|triton|transformers|kernels|tokenizers|numpy|evalplus|openai|bitsandbytes)=='
	$(LATEST)/bin/python -m pytest -q -n 2 -m "not slow" tests

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
# peer, under 8 minutes with the native build; at most 8 files under $$OUT (or bench/out/gpu), summary.md and
# figures.jsonl rewritten after every step. `python3 -m bench.gpu_check --dry-run` runs the same plumbing on CPU.
gpu-check:
	python3 -m bench.gpu_check

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info wizardcoder/*.so demo_out
