"""CLARS: Eq. 5 against NumPy with brute-force per-example norms, its relation
to LARS, distribution, gradient accumulation, errors and serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lars
from numpy_lars import NumpyLARS

L = keras.layers
RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 8, 8, 3)).astype("float32")
Y = RNG.integers(0, 5, size=16)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _layers():
    return [
        L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv"),
        L.Flatten(),
        L.Dense(8, activation="tanh", name="hidden"),
        L.Dense(5, name="head"),
    ]


def _model(kind="functional"):
    keras.utils.set_random_seed(1)
    if kind == "sequential":
        return keras.Sequential([keras.Input((8, 8, 3))] + _layers())
    inputs = x = keras.Input((8, 8, 3))
    for layer in _layers():
        x = layer(x)
    return keras.Model(inputs, x)


def _compiled(optimizer, strategy=None, jit_compile=False, kind="functional"):
    """`optimizer`: an optimizer, or a function making one (inside the strategy's scope)."""
    with (strategy or tf.distribute.get_strategy()).scope():
        optimizer = optimizer() if callable(optimizer) and not isinstance(optimizer, keras.optimizers.Optimizer) else optimizer
        model = _model(kind)
        model.compile(optimizer=optimizer, loss=_loss(), jit_compile=jit_compile)
    if isinstance(getattr(optimizer, "inner_optimizer", optimizer), keras_lars.CLARS):
        keras_lars.attach_per_example_norms(model)
    return model


def _weights(model):
    """The model's trainable variables without the per-example norm probes."""
    return [v for v in model.trainable_variables if not keras_lars.taps.is_probe(v)]


def _brute_force(model, x, y):
    """Mean gradient and (1/B) sum_i ||grad f_i|| per variable, one example at a time."""
    variables = _weights(model)
    grads, norms = [np.zeros(v.shape) for v in variables], np.zeros(len(variables))
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = _loss()(y[i : i + 1], model(x[i : i + 1], training=True))
        for j, g in enumerate(tape.gradient(loss, variables)):
            grads[j] += g.numpy() / len(x)
            norms[j] += np.linalg.norm(g.numpy()) / len(x)
    return grads, norms


@pytest.mark.parametrize(
    "options",
    [
        {"weight_decay": 1e-3, "kind": "sequential"},
        {"weight_decay": 1e-3},
        {"weight_decay": 5e-3, "nesterov": True, "epsilon": 1e-4},
        {"weight_decay": 0.0, "momentum": 0.0, "exclude_from_layer_adaptation": []},
        {"weight_decay": 1e-3, "trust_clip": True},
    ],
)
def test_matches_numpy_eq5_with_brute_force_norms(options):
    lr = 2.0
    options = dict(options)
    kind = options.pop("kind", "functional")
    model = _compiled(keras_lars.CLARS(learning_rate=lr, eta=0.01, **options), kind=kind)
    reference = NumpyLARS(
        momentum=options.get("momentum", 0.9), weight_decay=options["weight_decay"], eta=0.01,
        epsilon=options.get("epsilon", 0.0), nesterov=options.get("nesterov", False),
        trust_clip=options.get("trust_clip", False),
    )
    adapts = model.optimizer.adapts(_weights(model))
    decays = [len(v.shape) > 1 for v in _weights(model)]
    weights = [v.numpy().astype("float64") for v in _weights(model)]
    momentums = [np.zeros_like(w) for w in weights] if options.get("momentum", 0.9) else [None] * len(weights)
    for _ in range(3):
        grads, norms = _brute_force(model, X, Y)
        for j in range(len(weights)):
            weights[j], momentums[j] = reference.step(
                weights[j], momentums[j], grads[j], lr, adapt=adapts[j], decay=decays[j], gradient_norm=norms[j]
            )
        model.fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        for j, v in enumerate(_weights(model)):
            np.testing.assert_allclose(v.numpy(), weights[j], rtol=1e-5, atol=1e-6, err_msg=v.path)


def _one_step_sizes(optimizer_cls, x, y, **kwargs):
    model = _compiled(optimizer_cls(learning_rate=1.0, momentum=0.0, eta=0.01, **kwargs))
    before = [v.numpy() for v in _weights(model)]
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    return [np.linalg.norm(v.numpy() - b) for v, b in zip(_weights(model), before)]


def test_step_never_larger_than_lars_and_equal_for_identical_examples():
    lars = _one_step_sizes(keras_lars.LARS, X, Y)
    clars = _one_step_sizes(keras_lars.CLARS, X, Y)
    adapted = [j for j, v in enumerate(_model().trainable_variables) if len(v.shape) > 1]
    for j in adapted:
        assert clars[j] <= lars[j] * (1 + 1e-6)
        assert clars[j] < 0.9 * lars[j], "diverse examples: the per-example norms sum to more"
    same_x, same_y = np.repeat(X[:1], 8, axis=0), np.repeat(Y[:1], 8)
    np.testing.assert_allclose(
        _one_step_sizes(keras_lars.CLARS, same_x, same_y), _one_step_sizes(keras_lars.LARS, same_x, same_y), rtol=1e-5
    )


def _fit_weights(optimizer, strategy=None, batch_size=16, jit_compile=False):
    model = _compiled(optimizer, strategy, jit_compile)
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(batch_size)
    model.fit(dataset, epochs=3, verbose=0)
    return model


def _assert_same_state(model, reference):
    momentums = [m for m in model.optimizer.momentums if m is not None]
    reference_momentums = [m for m in reference.optimizer.momentums if m is not None]
    assert len(momentums) == len(reference_momentums)
    for a, b in zip(_weights(model) + momentums, _weights(reference) + reference_momentums):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=a.path)


def test_two_replica_mirrored_strategy_matches_one_replica(mirrored_strategy):
    two = _fit_weights(lambda: keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), mirrored_strategy)
    one = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3))
    _assert_same_state(two, one)


def test_gradient_accumulation_sums_over_micro_batches():
    accumulated = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3, gradient_accumulation_steps=4),
                               batch_size=4)
    whole = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), batch_size=16)
    assert int(accumulated.optimizer.iterations.numpy()) == 3  # optimizer steps, 12 micro-batches
    _assert_same_state(accumulated, whole)
    np.testing.assert_array_equal(accumulated.optimizer.per_example_norm_sums.numpy(), 0.0)


def test_xla_train_step_matches_graph():
    _assert_same_state(
        _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), jit_compile=True),
        _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), jit_compile=False),
    )


def test_loss_scaling_is_divided_out():
    scaled = _fit_weights(keras.optimizers.LossScaleOptimizer(keras_lars.CLARS(learning_rate=1.0)))
    factor = _fit_weights(keras_lars.CLARS(learning_rate=1.0, loss_scale_factor=1024.0))
    plain = _fit_weights(keras_lars.CLARS(learning_rate=1.0))
    for model in (scaled, factor):
        for a, b in zip(_weights(model), _weights(plain)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_without_per_example_norms_the_first_step_fails_and_changes_nothing():
    model = _model()
    model.compile(optimizer=keras_lars.CLARS(learning_rate=1.0), loss=_loss())
    before = [v.numpy() for v in model.trainable_variables]
    with pytest.raises(ValueError, match=r"per-example gradient norms for 'conv/kernel'.*attach_per_example_norms"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    for v, b in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_custom_training_loop():
    model = _model()
    optimizer = keras_lars.CLARS(learning_rate=1.0)
    model.compile(optimizer=optimizer, loss=_loss())
    keras_lars.attach_per_example_norms(model)
    with tf.GradientTape() as tape:
        loss = _loss()(Y, model(X, training=True))
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    one_step = _compiled(keras_lars.CLARS(learning_rate=1.0))
    one_step.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    for a, b in zip(_weights(model), _weights(one_step)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_defaults_config_and_save_load(tmp_path):
    optimizer = keras_lars.CLARS()
    assert optimizer.eta == 0.01 and optimizer.momentum == 0.9 and optimizer.weight_decay == 0.0
    config = optimizer.get_config()
    assert "trust_ratio_denominator" not in config and config["name"] == "CLARS"
    assert keras_lars.CLARS.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="fixed by Eq. 5"):
        keras_lars.CLARS(trust_ratio_denominator="norm_of_sum")
    with pytest.raises(ValueError, match="eta"):
        keras_lars.CLARS(eta=0.0)

    model = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3))
    path = str(tmp_path / "clars.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.optimizer, keras_lars.CLARS)
    assert int(restored.optimizer.iterations.numpy()) == 3
    _assert_same_state(restored, model)
    keras_lars.attach_per_example_norms(restored)
    restored.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    _assert_same_state(restored, model)
