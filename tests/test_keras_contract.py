"""Keras's own generic optimizer tests, run against LARS.

The tests are Keras's (`keras/src/optimizers/optimizer_test.py`,
`sgd_test.py`, `optimizer_sparse_test.py`, `loss_scale_optimizer_test.py`,
`multi_optimizer_test.py` and, on TensorFlow,
`keras/src/backend/tensorflow/optimizer_distribute_test.py`, shipped in the
installed package), unmodified: they check what every Keras optimizer must
do (iterations, clipping, EMA, gradient accumulation, callable learning
rates and schedules, constraints, loss scaling, overwrite-with-gradient,
checkpointing, naming, sparse gradients, `stateless_apply`, updates inside a
2-replica `MirroredStrategy`). LARS compiles each per-variable update with
XLA by default (`jit_compile=True`), so every apply here runs through XLA;
Keras's tests have no case of their own for an XLA-compiled train step
(test_lars.py checks `fit(jit_compile=True)` against Algorithm 1). Where they build `optimizers.SGD` or `optimizers.Adam`, they get
`LARSAsSGD`: `keras_lars.LARS` with every variable excluded from layer
adaptation (trust ratio 1), which is exactly Keras's momentum SGD, so
Keras's expected numbers are kept, not weakened. The trust ratio itself is
tested against the NumPy Algorithm 1 in test_lars.py.

Deselected at collection, each for a stated reason (`DESELECTED`,
`deselection_reason`): tests of Keras's registry of its own optimizers
(`optimizers.get("sgd")` returns Keras's class, not the patched name), a
test of Adam's variables, "sparse updates stay sparse", and the sparse cases
of Keras's other optimizers. The distribute tests run on the session's
2-replica MirroredStrategy (tests/conftest.py) instead of resetting
TensorFlow's context in `setUp` as Keras's do: a reset would invalidate the
other tests' variables in the same process.

CLARS needs per-example norms from an attached model, so these
variable-level tests do not apply to it; its Keras integration (fit, XLA,
MirroredStrategy, accumulation, loss scaling, checkpoints) is tested in
test_clars.py against brute-force per-example gradients.
"""

import importlib.util

import keras
import pytest
from keras.src import optimizers
from keras.src import testing
from keras.src.optimizers import (loss_scale_optimizer_test, multi_optimizer_test, optimizer_sparse_test,
                                  optimizer_test, sgd_test)

import keras_lars


@keras.saving.register_keras_serializable(package="keras_lars_tests")
def every_variable(variable):
    return True


@keras.saving.register_keras_serializable(package="keras_lars_tests")
class LARSAsSGD(keras_lars.LARS):
    """`keras.optimizers.SGD`'s signature and numbers, through LARS's code."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, name=None, **kwargs):
        kwargs.setdefault("exclude_from_layer_adaptation", [every_variable])
        kwargs.setdefault("exclude_from_weight_decay", [])
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, name=name, **kwargs)

    def __new__(cls, *args, **kwargs):
        # Keras's torch backend maps `optimizers.SGD` (patched to a subclass
        # of this one below) to its own torch SGD in `TorchOptimizer.__new__`.
        return object.__new__(cls)


@keras.saving.register_keras_serializable(package="keras_lars_tests")
class SGD(LARSAsSGD):
    """Named as Keras's class, so that Keras's naming test sees "sgd", "sgd_1"."""


@keras.saving.register_keras_serializable(package="keras_lars_tests")
class Adam(LARSAsSGD):
    """Where Keras's tests take Adam only as "some optimizer"."""


def _sparse_tests_with_lars():
    """Keras's sparse-gradient test module, executed with LARS as SGD: its
    test cases capture `optimizers.SGD` when the module runs. Only the SGD
    cases are kept (the others test Keras's own optimizers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("keras_sparse_test_with_lars", optimizer_sparse_test.__file__)
    module = importlib.util.module_from_spec(spec)
    real = optimizers.SGD
    optimizers.SGD = SGD
    try:
        spec.loader.exec_module(module)
    finally:
        optimizers.SGD = real
    return module.OptimizerSparseTest


DESELECTED = {
    "test_get_method": "Keras's registry of its own optimizer names",
    "test_pickleable_optimizers": "Keras's registry (`optimizers.get` by name)",
    "test_gradient_accumulation_with_weigth_decay": "Keras's registry (`optimizers.get` by name)",
    "test_setting_lr_to_callable_untracks_lr_var": "Adam's learning-rate variable by name",
    # LARS accepts momentum in [0, 1) and names the received value
    # (test_lars.py checks its errors); the test matches SGD's wording.
    "test_invalid_momentum": "Keras SGD's error wording",
    # LARS densifies a sparse gradient before its update (the trust ratio
    # needs the norm of the summed rows), so its variable updates are dense;
    # test_sparse_correctness checks the numbers.
    "test_sparse_gradients_": "LARS applies sparse gradients as dense updates",
}
KEPT_SPARSE_CASES = ("sgd", "sgd_momentum", "sgd_momentum_nesterov", "loss_scale_optimizer_sgd")


def deselection_reason(name):
    """Why Keras's test `name` does not run here, or None (tests/conftest.py
    deselects at collection)."""
    if name == "test_tensorboard_logging_with_multi_optimizer" and importlib.util.find_spec("tensorflow") is None:
        return "Keras's TensorBoard callback needs TensorFlow, not installed here"
    for prefix, reason in DESELECTED.items():
        if name.startswith(prefix):
            return reason
    case = name.removeprefix("test_sparse_correctness_")
    if case != name and case not in KEPT_SPARSE_CASES:
        return "a Keras optimizer other than SGD"
    return None


class TestKerasOptimizerContract(optimizer_test.OptimizerTest):
    pass


class TestKerasSparseGradients(_sparse_tests_with_lars()):
    pass


class TestKerasSGD(sgd_test.SGDTest):
    pass


if keras.backend.backend() == "tensorflow":
    from keras.src.backend.tensorflow import optimizer_distribute_test

    class TestKerasDistributed(optimizer_distribute_test.OptimizerDistributeTest):
        shared_strategy = None  # set by `lars_in_place_of_keras_optimizers`

        def setUp(self):
            testing.TestCase.setUp(self)
            self.strategy = self.shared_strategy


class TestKerasLossScaleOptimizer(loss_scale_optimizer_test.LossScaleOptimizerTest):
    pass


class TestKerasMultiOptimizer(multi_optimizer_test.MultiOptimizerTest):
    pass


@pytest.fixture(autouse=True)
def lars_in_place_of_keras_optimizers(monkeypatch, request):
    monkeypatch.setattr(optimizers, "SGD", SGD)
    monkeypatch.setattr(optimizers, "Adam", Adam)
    monkeypatch.setattr(loss_scale_optimizer_test, "SGD", SGD)
    monkeypatch.setattr(sgd_test, "SGD", SGD)
    if keras.backend.backend() == "tensorflow":
        monkeypatch.setattr(optimizer_distribute_test, "SGD", SGD)
        if request.cls is TestKerasDistributed:
            monkeypatch.setattr(TestKerasDistributed, "shared_strategy", request.getfixturevalue("mirrored_strategy"))
