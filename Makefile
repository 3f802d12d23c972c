# Set-up and jobs on a fresh Debian machine (run as root, or with sudo).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: train test test-heavy test-keras-hub bench accelerator-wheels data docs

# The demo job: ResNet-8 on Fashion-MNIST at batch 2048, all 10 epochs (the
# trainer's defaults are MLPerf's ResNet-50 on ImageNet).
FASHION_MNIST_JOB := --dataset fashion_mnist --model resnet8 --global-batch-size 2048 --epochs 10 \
  --lars-opt-learning-rate-warmup-epochs 2 --label-smoothing 0 --eval-every-epochs 1

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[train,plots,experiments,test,docs]'
	touch $@

# Debian's copy of Fashion-MNIST lets the real TFDS builder prepare it offline.
data:
	@test -d $(FASHION_MNIST) || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "dataset-fashion-mnist could not be installed: TFDS will download Fashion-MNIST instead"

train: $(VENV)/.installed data
	$(PY) -m train $(FASHION_MNIST_JOB) --output-dir runs/fashion_mnist_lars

# The library's tests (optimizers, per-example norms, Keras's own optimizer
# tests, every way of building a model, the install) run on each backend.
LIBRARY_TESTS := tests/test_lars.py tests/test_clars.py tests/test_per_example_norms.py tests/test_keras_contract.py \
  tests/test_model_construction.py tests/test_install.py

# Two pytest workers (pytest-xdist), one test file per worker at a time:
# the tests are mostly single-threaded, and a file's tests share fixtures.
# Longest files first (tests/conftest.py), not xdist's order by test count.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=30
# The wheel's venvs run pytest from tests/: `python -m pytest` puts the
# working directory first on sys.path, and the checkout's keras_lars/ must not
# shadow the installed wheel.
WHEEL_PYTEST = -m pytest -q -n 2 --dist loadfile -p no:cacheprovider

# The wheel a user installs, built from this checkout.
WHEEL := build/wheel/keras_lars-$(shell sed -n 's/^version = //p' setup.cfg)-py3-none-any.whl
$(WHEEL): setup.cfg pyproject.toml $(shell find keras_lars -name '*.py') keras_lars_train.py | $(VENV)/.installed
	rm -rf build/wheel && $(PY) -m pip wheel -q --no-deps -w build/wheel .

# The wheel next to keras + jax, and next to keras + torch: no TensorFlow.
.venv-jax/.installed: setup.cfg
	$(PYTHON) -m venv .venv-jax
	.venv-jax/bin/pip install -q keras 'jax[cpu]' pytest pytest-xdist
	touch $@
# torch 2.13.0's CPU build lies on these machines' disk; a plain `torch`
# takes a CUDA build of about 5 GB, for a machine with no GPU.
.venv-torch/.installed: setup.cfg
	$(PYTHON) -m venv .venv-torch
	.venv-torch/bin/pip install -q keras torch==2.13.0 pytest pytest-xdist
	touch $@
# Model Garden's LARS (tf-models-official pins TensorFlow 2.20).
.venv-reference/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv .venv-reference
	.venv-reference/bin/pip install -q -e '.[reference]'
	touch $@

# TensorFlow (the current release; the default backend): everything but the
# Model Garden comparison. Then the library's tests from the wheel on JAX and
# on PyTorch, the comparison with Model Garden's LARS, and the site. The four
# venvs install side by side (mostly downloads and unpacking); the phases
# run one after the other, each on both cores (running them side by side
# gained nothing: docs/measurements.md).
TEST_VENVS := $(VENV)/.installed .venv-jax/.installed .venv-torch/.installed .venv-reference/.installed
# Each phase prints its wall time ("make test: <phase> <seconds> s").
timed = t=$$(date +%s); $(2); rc=$$?; echo "make test: $(1) $$(( $$(date +%s) - t )) s"; exit $$rc
test:
	@$(call timed,venvs,$(MAKE) -j4 $(TEST_VENVS) data)
	@$(call timed,wheel,$(MAKE) $(WHEEL))
	@$(call timed,tensorflow,$(PYTEST) -m "not heavy and not keras_hub_all" --ignore tests/test_reference_parity.py tests)
	@$(call timed,wheel installs,for v in jax torch; do .venv-$$v/bin/pip uninstall -q -y keras-lars; .venv-$$v/bin/pip install -q --no-deps --force-reinstall $(WHEEL) || exit 1; done)
	@$(call timed,jax,cd tests && KERAS_BACKEND=jax KERAS_LARS_FROM_WHEEL=1 ../.venv-jax/bin/python $(WHEEL_PYTEST) $(LIBRARY_TESTS:tests/%=%))
	@$(call timed,torch,cd tests && KERAS_BACKEND=torch KERAS_LARS_FROM_WHEEL=1 ../.venv-torch/bin/python $(WHEEL_PYTEST) $(LIBRARY_TESTS:tests/%=%))
	@$(call timed,model garden,.venv-reference/bin/python -m pytest -q tests/test_reference_parity.py)
	@$(call timed,docs,$(MAKE) docs)

# The documentation site, strictly (-W -n: any warning, broken link, missing
# image or unresolved docstring reference fails), from scratch (-E), offline.
docs: $(VENV)/.installed
	$(VENV)/bin/sphinx-build -q -E -W --keep-going -n -b html docs build/docs
	@echo "docs: open build/docs/index.html"

# CLARS on every KerasHub backbone family the tests build from a config, on
# the three backends. KerasHub requires TensorFlow Text (hence TensorFlow);
# the PyTorch venv takes it without its dependencies (its pure-Python ones
# added), so it stays without TensorFlow.
KERAS_HUB_PURE_DEPS := absl-py kagglehub packaging regex rich sentencepiece tokenizers
test-keras-hub: $(VENV)/.installed .venv-torch/.installed $(WHEEL)
	$(PYTEST) tests/test_keras_hub.py
	KERAS_BACKEND=jax $(PYTEST) tests/test_keras_hub.py
	.venv-torch/bin/pip install -q --no-deps --force-reinstall $(WHEEL) keras-hub
	.venv-torch/bin/pip install -q $(KERAS_HUB_PURE_DEPS)
	cd tests && KERAS_BACKEND=torch ../.venv-torch/bin/python $(WHEEL_PYTEST) test_keras_hub.py

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
