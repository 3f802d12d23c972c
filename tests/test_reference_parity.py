"""LARS against TF Model Garden's LARS, and one replica against two."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from official.modeling.optimization import lars as lars_mg

from keras_lars import LARS

SHAPES = {"conv/kernel": (3, 3, 4, 8), "dense/kernel": (16, 10), "dense/bias": (10,)}


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_model_garden_lars(nesterov):
    rng = np.random.default_rng(0)
    init = {k: rng.normal(size=s).astype("float32") for k, s in SHAPES.items()}
    grads = [{k: rng.normal(size=s).astype("float32") * 0.1 for k, s in SHAPES.items()} for _ in range(20)]
    lr, wd = 3.0, 5e-4

    mg_vars = {k: tf.Variable(v, name=k.replace("/", "_")) for k, v in init.items()}
    reference = lars_mg.LARS(learning_rate=lr, momentum=0.9, weight_decay_rate=wd, eeta=0.001, nesterov=nesterov,
                             exclude_from_weight_decay=["bias"])
    ours_vars = [keras.Variable(v, name=k.split("/")[1]) for k, v in init.items()]
    ours = LARS(learning_rate=lr, momentum=0.9, weight_decay=wd, eta=0.001, nesterov=nesterov,
                trust_ratio_denominator="norm_of_sum", exclude_from_weight_decay=["bias"])
    for step in grads:
        reference.apply_gradients([(tf.constant(step[k]), mg_vars[k]) for k in SHAPES])
        ours.apply([step[k] for k in SHAPES], ours_vars)
    for (k, mg), mine in zip(mg_vars.items(), ours_vars):
        np.testing.assert_allclose(mine.numpy(), mg.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
        assert np.abs(mine.numpy() - init[k]).max() > 1e-3, k


def _conv_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="dense")(x))


def _fit(strategy, x, y, global_batch):
    with strategy.scope():
        model = _conv_model()
        model.compile(optimizer=LARS(learning_rate=2.0, weight_decay=1e-3), loss="sparse_categorical_crossentropy")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch)
    model.fit(dataset, epochs=2, verbose=0)
    return [w.numpy() for w in model.trainable_weights], [m.numpy() for m in model.optimizer.momentums]


def test_two_replica_mirrored_strategy_matches_one_replica(mirrored_strategy):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) >= 2, "conftest configures two logical CPU devices"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=(64,))
    two_w, two_m = _fit(mirrored_strategy, x, y, global_batch=16)
    one_w, one_m = _fit(tf.distribute.OneDeviceStrategy(devices[0]), x, y, global_batch=16)
    initial = [w.numpy() for w in _conv_model().trainable_weights]
    for a, b, w0 in zip(two_w, one_w, initial):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert np.abs(b - w0).max() > 1e-3
    for a, b in zip(two_m, one_m):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
