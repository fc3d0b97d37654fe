# `make run` / `make test` bootstrap .venv from a bare python3 and do everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs

.PHONY: install run data test test-all bench gpu-check clean

# PYTHONWARNINGS hides setuptools' "Editable installation" notice: nothing a user can act on.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[test,tb,torch,mlflow,wandb]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m experiments.vae --workdir $(WORKDIR)/vae --overwrite

# Offline Fashion-MNIST (what `make run` trains on without internet): Debian's package, with
# sudo when not root; where apt cannot install it, dlcore downloads it (TFDS's URLs, SHA-256).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
data: install
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist \
	  || echo "apt-get could not install dataset-fashion-mnist; trying a download"; fi
	$(PY) -m dlcore.data.images fashion_mnist

test: install
	$(PY) -m pytest tests -m "not slow" --durations=15

test-all: install
	$(PY) -m pytest tests

bench: install
	$(PY) -m benchmarks.jit_vs_eager --all

# On a GPU machine with its own JAX and PyTorch (no venv): see benchmarks/gpu_check.py.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=.:$$PYTHONPATH $(GPU_PYTHON) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
