"""`keras_lars.train.optimizers`: the one factory the trainer, the
experiments and the self-supervised example build their optimizers with."""

import keras
import numpy as np
import pytest

import keras_lars
from keras_lars.train import optimizers


def _variables():
    return [keras.Variable(np.ones((3, 2), "float32"), name="kernel"),
            keras.Variable(np.ones((2,), "float32"), name="bias")]


def _decayed(optimizer, kernel, bias):
    optimizer.apply([np.zeros((3, 2), "float32"), np.zeros((2,), "float32")], [kernel, bias])
    return bool(np.all(kernel.numpy() < 1)), bool(np.any(bias.numpy() != 1))


def test_each_name_builds_its_optimizer_with_its_exclusions():
    kernel, bias = _variables()
    lars = optimizers.build_optimizer("lars", 0.1, weight_decay=1e-4, eta=0.002)
    assert type(lars) is keras_lars.LARS and lars.eta == 0.002 and lars.adapts([kernel, bias]) == [True, False]
    adapted = optimizers.build_optimizer("clars", 0.1, weight_decay=1e-4, adapt_biases=True)
    assert type(adapted) is keras_lars.CLARS and adapted.adapts([kernel, bias]) == [True, True]
    baseline = optimizers.build_optimizer("lars_sgd", 0.1, weight_decay=1e-4, nesterov=True)
    assert type(baseline) is keras_lars.LARS and baseline.adapts([kernel, bias]) == [False, False]
    sgd = optimizers.build_optimizer("sgd", 0.1, weight_decay=0.5, trainable_variables=[kernel, bias])
    assert type(sgd) is keras.optimizers.SGD
    assert _decayed(sgd, kernel, bias) == (True, False)  # zero gradients: only weight decay moves a weight
    adamw = optimizers.build_optimizer("adamw", 0.1, weight_decay=0.5)
    assert type(adamw) is keras.optimizers.AdamW and _decayed(adamw, *_variables()) == (True, False)
    scaled = optimizers.build_optimizer("lars", 0.1, weight_decay=1e-4, initial_loss_scale=128.0)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer) and type(scaled.inner_optimizer) is keras_lars.LARS


def test_bad_names_and_options_are_refused():
    with pytest.raises(ValueError, match=r"optimizer must be one of .*Received: 'adam'"):
        optimizers.build_optimizer("adam", 0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="'sgd' has no trust ratio.*adapt_biases=True"):
        optimizers.build_optimizer("sgd", 0.1, weight_decay=0.0, adapt_biases=True)
    with pytest.raises(ValueError, match=r"'adamw' has no trust ratio.*\['eta'\]"):
        optimizers.build_optimizer("adamw", 0.1, weight_decay=0.0, eta=0.001)


def test_mlperf_schedule_in_epochs():
    schedule = optimizers.mlperf_schedule(2.0, steps_per_epoch=10, epochs=5, warmup_epochs=1.04,
                                          end_learning_rate=1e-4, power=2.0)
    assert schedule.warmup_steps == 10 and schedule.train_steps == 50
    assert [float(schedule(t)) for t in (0, 5, 10)] == pytest.approx([0.0, 1.0, 2.0])
    assert float(schedule(10**6)) == pytest.approx(1e-4)
    # The decay spans at least the warmup and one step.
    assert optimizers.mlperf_schedule(1.0, 2, 1, 3.0, 1e-4, 2.0).train_steps == 6
