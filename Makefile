# Set-up and jobs on a fresh Debian machine (run as root, or with sudo).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: train test test-heavy bench accelerator-wheels data docs

# The demo job: ResNet-8 on Fashion-MNIST at batch 2048, all 10 epochs (the
# trainer's defaults are MLPerf's ResNet-50 on ImageNet).
FASHION_MNIST_JOB := --dataset fashion_mnist --model resnet8 --global-batch-size 2048 --epochs 10 \
  --lars-opt-learning-rate-warmup-epochs 2 --label-smoothing 0 --eval-every-epochs 1

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[train,plots,test,docs]'
	touch $@

# Debian's copy of Fashion-MNIST lets the real TFDS builder prepare it offline.
data:
	@test -d $(FASHION_MNIST) || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "dataset-fashion-mnist could not be installed: TFDS will download Fashion-MNIST instead"

train: $(VENV)/.installed data
	$(PY) -m train $(FASHION_MNIST_JOB) --output-dir runs/fashion_mnist_lars

# TensorFlow (the default backend), then the optimizer and per-example norm
# tests again on Keras's JAX backend.
JAX_TESTS := tests/test_lars.py tests/test_clars.py tests/test_per_example_norms.py tests/test_keras_contract.py

# Two pytest workers (pytest-xdist), one test file per worker at a time:
# the tests are mostly single-threaded, and a file's tests share fixtures.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile

test: $(VENV)/.installed data
	$(PYTEST) -m "not heavy" tests
	KERAS_BACKEND=jax $(PYTEST) $(JAX_TESTS)
	$(MAKE) docs

# The documentation site, strictly (-W -n: any warning, broken link, missing
# image or unresolved docstring reference fails), from scratch (-E), offline.
docs: $(VENV)/.installed
	$(VENV)/bin/sphinx-build -q -E -W --keep-going -n -b html docs build/docs
	@echo "docs: open build/docs/index.html"

# CLARS on every keras.applications family (about 14 minutes on TensorFlow).
test-heavy: $(VENV)/.installed
	$(PYTEST) -m heavy tests

bench: $(VENV)/.installed
	$(PY) benchmarks/optimizer_apply.py
	$(PY) benchmarks/clars_step.py
	$(PY) benchmarks/steps_per_loop.py

# Keras and its pure dependencies as wheels for a GPU machine that has JAX
# (and NumPy, ml_dtypes) but no internet: see benchmarks/README.md. Expanded
# only here (`=`): it imports Keras to read its version.
ACCELERATOR_WHEELS = keras==$(shell $(PY) -c "import keras; print(keras.__version__)" 2>/dev/null || echo 3.15.1) \
  absl-py h5py namex optree packaging rich markdown-it-py mdurl pygments typing-extensions
accelerator-wheels: $(VENV)/.installed
	for v in 3.11 3.12 3.13; do $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $$v \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d benchmarks/wheels $(ACCELERATOR_WHEELS) || exit 1; done
	@du -sh benchmarks/wheels
