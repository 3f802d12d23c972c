# Set-up and jobs on a fresh Debian machine (run as root, or with sudo).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: train test bench data

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Debian's copy of Fashion-MNIST lets the real TFDS builder prepare it offline.
data:
	@test -d $(FASHION_MNIST) || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "dataset-fashion-mnist could not be installed: TFDS will download Fashion-MNIST instead"

train: $(VENV)/.installed data
	$(PY) -m train --output-dir runs/fashion_mnist_lars

test: $(VENV)/.installed data
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) benchmarks/optimizer_apply.py
	$(PY) benchmarks/clars_step.py
