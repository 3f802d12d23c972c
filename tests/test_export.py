"""A model trained with CLARS (per-example norms attached) is exported for
serving as any Keras model is: `model.export` (TF Serving's SavedModel) and
`tf.saved_model.save`, served by TensorFlow alone, with the predictions of
`model.predict`. TensorFlow only: Keras's SavedModel export needs it."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_lars

tf = pytest.importorskip("tensorflow")
# `make test` runs this file in its TensorFlow phase only.
pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="Keras's SavedModel export of a TensorFlow-backend model")

L = keras.layers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A serving process: TensorFlow, NumPy and the SavedModel, keras_lars unimportable.
SERVE = """
import json, sys
import numpy as np
class NoKerasLARS:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "keras_lars":
            raise ImportError("no keras_lars in a serving process")
sys.meta_path.insert(0, NoKerasLARS())
import tensorflow as tf
served = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
print(json.dumps(served.serve(x).numpy().tolist()))
"""


def _trained(model, x, y):
    model.compile(optimizer=keras_lars.CLARS(learning_rate=0.1), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    keras_lars.attach_per_example_norms(model)
    before = [np.array(v) for v in model.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert any(not np.array_equal(b, np.array(v)) for b, v in zip(before, model.trainable_variables))
    return model


def _cnn():
    return keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(), L.Flatten(),
                             L.Dense(3)])


def _shared_tower():
    # One Dense called on two inputs: its taps are a SharedLayerTap.
    a, b = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    flat = L.Flatten()
    tower = L.Dense(5, name="tower")
    merged = L.Concatenate()([tower(flat(a)), tower(flat(b))])
    model = keras.Model([a, b], L.Dense(3)(merged))
    return model


def test_export_after_clars_serves_the_predictions_without_keras_lars(tmp_path):
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    x, y = rng.normal(size=(16, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 16)
    model = _trained(_cnn(), x, y)
    model.export(str(tmp_path / "served"), verbose=False)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "served"), str(tmp_path / "x.npy")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.array(json.loads(result.stdout.strip().splitlines()[-1]), "float32")
    np.testing.assert_allclose(served, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    # The model trains on after the export, its norms still those of its calls.
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(np.isfinite(np.array(v)).all() for v in model.trainable_variables)


def test_saved_model_save_of_a_shared_layer_model_after_clars(tmp_path):
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    x = [rng.normal(size=(16, 8, 8, 1)).astype("float32") for _ in range(2)]
    y = rng.integers(0, 3, 16)
    model = _trained(_shared_tower(), x, y)
    tf.saved_model.save(model, str(tmp_path / "saved"))
    signature = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    served = list(signature(**{name: tf.constant(v) for name, v in zip(sorted(signature.structured_input_signature[1]),
                                                                         x)}).values())[0]
    np.testing.assert_allclose(served.numpy(), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_tapped_layer_called_on_its_own_runs_its_own_call():
    """Export traces each layer apart from the model; so may a user. Such a
    call is the layer's own, counts no call of the model's, and the
    per-example norms of the model's next call still match brute force."""
    rng = np.random.default_rng(2)
    keras.utils.set_random_seed(2)
    x, y = rng.normal(size=(8, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 8)
    model = _trained(keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3), L.Flatten(), L.Dense(3)]), x, y)
    conv = model.layers[0]
    alone = [conv(x), conv(x)]  # twice: no "called more than once" here
    expected = type(conv).call(conv, tf.constant(x))
    for out in alone:
        np.testing.assert_array_equal(np.array(out), np.array(expected))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, loss, [conv.kernel])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(conv.kernel.value)
        losses = [loss(y[i:i + 1], model(x[i:i + 1], training=True)) for i in range(len(x))]
    brute = [float(tf.norm(tape.gradient(loss_i, conv.kernel.value))) for loss_i in losses]
    np.testing.assert_allclose(float(norms[0]), np.mean(brute), rtol=1e-4)  # Eq. 5: the mean of the norms
