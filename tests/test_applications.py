"""CLARS on models nobody here wrote: one model of every `keras.applications`
family and a small transformer (Embedding, MultiHeadAttention). For each:
per-example norms equal brute force (each example's gradient alone,
BatchNorm in inference mode so that the examples are independent), and one
CLARS training step gives finite weights."""

import keras
import numpy as np
import pytest

import keras_lars
from backends import per_example_gradients

A = keras.applications
# family -> (constructor, the smallest input side it accepts)
FAMILIES = {
    "ConvNeXtTiny": (A.ConvNeXtTiny, 32),
    "DenseNet121": (A.DenseNet121, 32),
    "EfficientNetB0": (A.EfficientNetB0, 32),
    "EfficientNetV2B0": (A.EfficientNetV2B0, 32),
    "InceptionResNetV2": (A.InceptionResNetV2, 75),
    "InceptionV3": (A.InceptionV3, 75),
    "MobileNet": (A.MobileNet, 32),
    "MobileNetV2": (A.MobileNetV2, 32),
    "MobileNetV3Small": (A.MobileNetV3Small, 32),
    "NASNetMobile": (A.NASNetMobile, 32),
    "ResNet50": (A.ResNet50, 32),
    "ResNet50V2": (A.ResNet50V2, 32),
    "VGG16": (A.VGG16, 32),
    "Xception": (A.Xception, 71),
}
CLASSES = 4
# The cheapest, run by `make test`; the others are `heavy` (`make test-heavy`).
EVERY_RUN = ("MobileNet", "VGG16")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy()


def _transformer(tokens=8, vocabulary=20, width=16):
    inputs = keras.Input((tokens,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, width)(inputs)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = keras.layers.LayerNormalization()(x + attended)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(x))


def _check(model, x, y):
    model.compile(optimizer=keras_lars.CLARS(0.1), loss=_loss())
    # The variables CLARS adapts (by default: every variable of rank >= 2).
    variables = [v for v, adapt in zip(model.trainable_variables, model.optimizer.adapts(model.trainable_variables))
                 if adapt]
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables, training=False)
    brute = per_example_gradients(model, _loss(), x, y, variables, training=False)
    expected = np.mean([[np.linalg.norm(g) for g in example] for example in brute], axis=0)
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=2e-4, atol=1e-7)
    keras_lars.attach_per_example_norms(model)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert all(np.isfinite(keras.ops.convert_to_numpy(v)).all() for v in model.trainable_variables)
    return len(norms)


@pytest.mark.slow
@pytest.mark.parametrize("family", [f if f in EVERY_RUN else pytest.param(f, marks=pytest.mark.heavy)
                                    for f in sorted(FAMILIES)])
def test_clars_is_exact_on_every_keras_applications_family(family):
    constructor, size = FAMILIES[family]
    keras.utils.set_random_seed(0)
    model = constructor(weights=None, input_shape=(size, size, 3), classes=CLASSES)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    assert _check(model, x, np.array([1, 3])) >= 16  # VGG16 has the fewest adapted kernels


def test_clars_is_exact_on_a_small_transformer():
    keras.utils.set_random_seed(0)
    model = _transformer()
    ids = np.random.default_rng(0).integers(0, 20, size=(3, 8)).astype("int32")
    ids[0, :4] = 5  # a repeated token
    # Embedding; the attention's query/key/value/output kernels and its
    # query/key/value biases (rank 2: heads x key_dim); two Dense kernels.
    assert _check(model, ids, np.array([0, 1, 2])) == 10
