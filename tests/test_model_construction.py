"""Per-example norms attach to a model however a Keras user builds or loads
it, and match brute force (each example through its own autodiff pass).
Runs on every backend `make test` runs."""

import keras
import numpy as np
import pytest

import keras_lars
from backends import per_example_gradients

L = keras.layers
B = 5


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _layers():
    return [L.Conv2D(3, 3, activation="relu"), L.Conv2D(4, 3, strides=2), L.Flatten(), L.Dense(4)]


def sequential_add_with_input():
    model = keras.Sequential()
    model.add(keras.Input((8, 8, 2)))
    for layer in _layers():
        model.add(layer)
    return model


def sequential_add_without_input():
    model = keras.Sequential()
    for layer in _layers():
        model.add(layer)
    model.build((None, 8, 8, 2))
    return model


def sequential_list_built_by_a_call():
    model = keras.Sequential(_layers())
    model(np.zeros((1, 8, 8, 2), "float32"))
    return model


def sequential_list_with_input():
    return keras.Sequential([keras.Input((8, 8, 2))] + _layers())


def functional():
    inputs = keras.Input((8, 8, 2))
    x = inputs
    for layer in _layers():
        x = layer(x)
    return keras.Model(inputs, x)


def nested():
    inner = keras.Sequential([keras.Input((8, 8, 2))] + _layers()[:2], name="inner")
    inputs = keras.Input((8, 8, 2))
    return keras.Model(inputs, L.Dense(4)(L.Flatten()(inner(inputs))))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.stack = _layers()

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def subclassed_built_lazily():
    model = Subclassed()
    model(np.zeros((1, 8, 8, 2), "float32"))
    return model


def loaded(tmp_path):
    path = str(tmp_path / "m.keras")
    sequential_add_without_input().save(path)
    return keras.models.load_model(path)


def cloned():
    return keras.models.clone_model(sequential_add_without_input())


BUILDERS = {f.__name__: f for f in (
    sequential_add_with_input, sequential_add_without_input, sequential_list_built_by_a_call,
    sequential_list_with_input, functional, nested, subclassed_built_lazily, cloned)}
BUILDERS["load_model"] = loaded


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(B, 8, 8, 2)).astype("float32"), rng.integers(0, 4, size=B)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_construction_path_attaches_and_is_exact(name, tmp_path):
    keras.utils.set_random_seed(1)
    model = BUILDERS[name](tmp_path) if name == "load_model" else BUILDERS[name]()
    x, y = _data()
    variables = [v for v in model.trainable_variables if len(v.shape) >= 2]
    assert len(variables) == 3
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables)
    grads = per_example_gradients(model, _loss(), x, y, variables)
    expected = np.mean([[np.linalg.norm(g) for g in example] for example in grads], axis=0)
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["sequential_add_without_input", "load_model"])
def test_clars_trains_after_attaching(name, tmp_path):
    keras.utils.set_random_seed(1)
    model = BUILDERS[name](tmp_path) if name == "load_model" else BUILDERS[name]()
    model.compile(optimizer=keras_lars.CLARS(learning_rate=0.1), loss=_loss())
    keras_lars.attach_per_example_norms(model)
    x, y = _data()
    before = [np.array(v) for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, np.array(v)) for b, v in zip(before, model.trainable_variables))


def test_a_tower_a_model_calls_twice_gets_exact_norms():
    """A Siamese tower (one sub-model called on two inputs) shares its
    layers: example i's gradient is the sum of the two calls'
    contributions, and its norm is what brute force gives."""
    keras.utils.set_random_seed(2)
    tower = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="tanh", name="tower_dense")], name="tower")
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], L.Dense(2)(L.Concatenate()([tower(a), tower(b)])))
    rng = np.random.default_rng(3)
    x = [rng.normal(size=(B, 4)).astype("float32"), rng.normal(size=(B, 4)).astype("float32")]
    y = rng.integers(0, 2, size=B)
    variables = [v for v in model.trainable_variables if len(v.shape) >= 2]
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables)
    grads = per_example_gradients(model, _loss(), x, y, variables)
    expected = np.mean([[np.linalg.norm(g) for g in example] for example in grads], axis=0)
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5)


class CallsALayerTwice(keras.Model):
    """A subclassed model calling one layer twice: its graph is not known, so
    the sharing shows only when the step runs."""

    def __init__(self):
        super().__init__()
        self.shared = L.Dense(4, activation="tanh", name="shared")
        self.head = L.Dense(2, name="head")

    def call(self, x):
        return self.head(self.shared(self.shared(x)))


@pytest.mark.parametrize("mode", ["fit", "one_pass"])
def test_a_subclassed_model_calling_a_layer_twice_is_refused_before_any_update(mode):
    keras.utils.set_random_seed(3)
    model = CallsALayerTwice()
    x = np.random.default_rng(4).normal(size=(B, 4)).astype("float32")
    y = np.arange(B) % 2
    model(x)
    model.compile(optimizer=keras_lars.CLARS(learning_rate=0.1), loss=_loss())
    before = [np.array(v) for v in model.trainable_variables]
    with pytest.raises(ValueError, match="'shared' .* is called more than once in one call of model"):
        if mode == "fit":
            keras_lars.attach_per_example_norms(model)
            model.fit(x, y, batch_size=B, epochs=1, verbose=0)
        else:
            keras_lars.per_example_gradient_norms(model, x, y, _loss(), model.trainable_variables)
    assert all(np.array_equal(b, np.array(v)) for b, v in zip(before, model.trainable_variables))
