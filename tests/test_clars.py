"""CLARS: Eq. 5 against NumPy with brute-force per-example norms, its relation
to LARS, distribution, gradient accumulation, errors and serialization.
Runs on TensorFlow and JAX (brute force by tf.GradientTape or jax.grad per
example)."""

import contextlib

import keras
import numpy as np
import pytest

import keras_lars
from backends import gradients, jax_only, per_example_gradients, tensorflow_only
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
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        optimizer = optimizer() if callable(optimizer) and not isinstance(optimizer, keras.optimizers.Optimizer) else optimizer
        model = _model(kind)
        model.compile(optimizer=optimizer, loss=_loss(), jit_compile=jit_compile)
    if isinstance(getattr(optimizer, "inner_optimizer", optimizer), keras_lars.CLARS):
        keras_lars.attach_per_example_norms(model)
    return model


def _weights(model):
    """The model's trainable variables without the per-example norm probes."""
    return [v for v in model.trainable_variables if not keras_lars.per_example.is_probe(v)]


def _brute_force(model, x, y, sample_weight=None):
    """Mean gradient and (1/B) sum_i ||grad f_i|| per variable, one example
    at a time; with `sample_weight` (B,), f_i = w_i l_i (Keras's default
    reduction: the batch loss is sum_i w_i l_i / B)."""
    variables = _weights(model)
    per_example = per_example_gradients(model, _loss(), x, y, variables)
    if sample_weight is not None:
        per_example = [[w * g for g in example] for w, example in zip(sample_weight, per_example)]
    grads = [np.mean([example[j] for example in per_example], axis=0) for j in range(len(variables))]
    norms = np.mean([[np.linalg.norm(g) for g in example] for example in per_example], axis=0)
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


def test_sample_weight_makes_each_example_loss_the_weighted_one():
    """fit(..., sample_weight=w): Keras's batch loss is sum_i w_i l_i / B, so
    f_i = w_i l_i and n_k = (1/B) sum_i |w_i| ||grad l_i|| (an example of
    weight 0 adds 0 to the sum and still counts in B), against brute force
    and NumPy's Eq. 5 over three steps."""
    lr, weights_of_examples = 2.0, np.random.default_rng(5).uniform(0.0, 2.0, size=16).astype("float32")
    weights_of_examples[[3, 9]] = 0.0
    model = _compiled(keras_lars.CLARS(learning_rate=lr, eta=0.01, weight_decay=1e-3))
    reference = NumpyLARS(momentum=0.9, weight_decay=1e-3, eta=0.01, epsilon=0.0)
    adapts = model.optimizer.adapts(_weights(model))
    decays = [len(v.shape) > 1 for v in _weights(model)]
    weights = [v.numpy().astype("float64") for v in _weights(model)]
    momentums = [np.zeros_like(w) for w in weights]
    for _ in range(3):
        grads, norms = _brute_force(model, X, Y, weights_of_examples)
        for j in range(len(weights)):
            weights[j], momentums[j] = reference.step(
                weights[j], momentums[j], grads[j], lr, adapt=adapts[j], decay=decays[j], gradient_norm=norms[j]
            )
        model.fit(X, Y, sample_weight=weights_of_examples, batch_size=16, epochs=1, shuffle=False, verbose=0)
        for j, v in enumerate(_weights(model)):
            np.testing.assert_allclose(v.numpy(), weights[j], rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_masked_per_token_loss_makes_each_example_its_tokens():
    """A padding mask (Embedding(mask_zero=True)) on a per-token loss: Keras
    divides the masked sum by the batch's N valid tokens, so f_i = (B / N)
    sum_t m_it l_it, an example's tokens together; padding adds nothing.
    Against brute force and NumPy's Eq. 5 over three steps."""
    rng = np.random.default_rng(6)
    batch, length = 8, 6
    tokens = rng.integers(1, 20, size=(batch, length)).astype("int32")
    for i, valid in enumerate([6, 2, 4, 1, 6, 3, 5, 2]):
        tokens[i, valid:] = 0  # padding
    targets = rng.integers(0, 5, size=(batch, length))
    mask = (tokens != 0).astype("float64")
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((length,), dtype="int32"), L.Embedding(20, 4, mask_zero=True, name="embed"),
                              L.Dense(8, activation="tanh", name="hidden"), L.Dense(5, name="head")])
    lr = 2.0
    model.compile(optimizer=keras_lars.CLARS(learning_rate=lr, eta=0.01, weight_decay=1e-3), loss=_loss())
    keras_lars.attach_per_example_norms(model)
    variables = _weights(model)
    reference = NumpyLARS(momentum=0.9, weight_decay=1e-3, eta=0.01, epsilon=0.0)
    adapts = model.optimizer.adapts(variables)
    decays = [len(v.shape) > 1 for v in variables]
    weights = [keras.ops.convert_to_numpy(v).astype("float64") for v in variables]
    momentums = [np.zeros_like(w) for w in weights]
    scale = float(batch / mask.sum())

    def example_loss(i):
        logits = model(tokens[i:i + 1], training=True)
        per_token = keras.losses.sparse_categorical_crossentropy(targets[i:i + 1], logits, from_logits=True)
        return keras.ops.sum(per_token * keras.ops.convert_to_tensor(mask[i:i + 1], "float32")) * scale

    for _ in range(3):
        per_example = [gradients(model, lambda i=i: example_loss(i), variables) for i in range(batch)]
        for j in range(len(weights)):
            grad = np.mean([example[j] for example in per_example], axis=0)
            norm = np.mean([np.linalg.norm(example[j]) for example in per_example])
            weights[j], momentums[j] = reference.step(weights[j], momentums[j], grad, lr, adapt=adapts[j],
                                                      decay=decays[j], gradient_norm=norm)
        model.fit(tokens, targets, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        for j, v in enumerate(variables):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(v), weights[j], rtol=1e-5, atol=1e-6, err_msg=v.path)


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


def _fit_weights(optimizer, strategy=None, batch_size=16, jit_compile=False, kind="functional"):
    model = _compiled(optimizer, strategy, jit_compile, kind)
    model.fit(X, Y, batch_size=batch_size, epochs=3, shuffle=False, verbose=0)
    return model


def _assert_same_state(model, reference):
    momentums = [m for m in model.optimizer.momentums if m is not None]
    reference_momentums = [m for m in reference.optimizer.momentums if m is not None]
    assert len(momentums) == len(reference_momentums)
    for a, b in zip(_weights(model) + momentums, _weights(reference) + reference_momentums):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=a.path)


@tensorflow_only
def test_two_replica_mirrored_strategy_matches_one_replica(mirrored_strategy):
    two = _fit_weights(lambda: keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), mirrored_strategy)
    one = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3))
    _assert_same_state(two, one)


@jax_only
@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_jax_data_parallel_matches_one_device(kind):
    import jax

    devices = jax.devices("cpu")[:2]
    assert len(devices) == 2, "conftest sets XLA_FLAGS=--xla_force_host_platform_device_count=4"
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        two = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), kind=kind)
        assert len(two.layers[-1].kernel.value.sharding.device_set) == 2  # replicated over both
    finally:
        keras.distribution.set_distribution(None)
    one = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), kind=kind)
    _assert_same_state(two, one)


@jax_only
@pytest.mark.parametrize("optimizer", ["lars", "clars"])
def test_jax_model_parallel_matches_one_device(optimizer):
    """Kernels sharded over a model axis (`ModelParallel` with a `LayoutMap`,
    a 2 x 2 mesh, the batch split over the other axis): the trust ratio's
    norms of a sharded kernel are of the whole kernel, CLARS's per-example
    norms a mean over the global batch; the same state as one device."""
    import jax

    devices = jax.devices("cpu")[:4]
    assert len(devices) == 4, "conftest sets XLA_FLAGS=--xla_force_host_platform_device_count=4"
    mesh = keras.distribution.DeviceMesh((2, 2), ("batch", "model"), devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout["conv/kernel"] = (None, None, None, "model")
    layout["hidden/kernel"] = (None, "model")
    layout["head/kernel"] = ("model", None)
    cls = {"lars": keras_lars.LARS, "clars": keras_lars.CLARS}[optimizer]
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
    try:
        sharded = _fit_weights(cls(learning_rate=1.0, weight_decay=1e-3))
        kernel = sharded.get_layer("hidden").kernel.value
        assert len(kernel.sharding.device_set) == 4 and not kernel.sharding.is_fully_replicated
    finally:
        keras.distribution.set_distribution(None)
    one = _fit_weights(cls(learning_rate=1.0, weight_decay=1e-3))
    _assert_same_state(sharded, one)


def test_gradient_accumulation_sums_over_micro_batches():
    accumulated = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3, gradient_accumulation_steps=4),
                               batch_size=4)
    whole = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), batch_size=16)
    assert int(keras.ops.convert_to_numpy(accumulated.optimizer.iterations)) == 3  # optimizer steps, 12 micro-batches
    _assert_same_state(accumulated, whole)
    np.testing.assert_array_equal(accumulated.optimizer.per_example_norm_sums.numpy(), 0.0)


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_xla_train_step_matches_graph(kind):
    _assert_same_state(
        _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), jit_compile=True, kind=kind),
        _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3), jit_compile=False, kind=kind),
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
    if keras.backend.backend() == "jax":
        return  # Keras's JAX fit drops the variables' values when a step raises while tracing.
    for v, b in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    assert int(model.optimizer.iterations.numpy()) == 0


def _custom_loop_gradients(model, loss_fn):
    """The gradients of `model.trainable_variables` (the probes included) as
    a custom loop on this backend gets them: a `tf.GradientTape`, `jax.grad`
    of the stateless call, or `loss.backward()` and each variable's `.grad`."""
    variables = model.trainable_variables
    if keras.backend.backend() == "torch":
        loss_fn().backward()
        return [v.value.grad for v in variables]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, variables)
    return [g.astype("float32") for g in gradients(model, loss_fn, variables)]


def test_custom_training_loop():
    model = _model()
    optimizer = keras_lars.CLARS(learning_rate=1.0)
    model.compile(optimizer=optimizer, loss=_loss())
    keras_lars.attach_per_example_norms(model)
    grads = _custom_loop_gradients(model, lambda: _loss()(Y, model(X, training=True)))
    optimizer.apply(grads, model.trainable_variables)
    one_step = _compiled(keras_lars.CLARS(learning_rate=1.0))
    one_step.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    for a, b in zip(_weights(model), _weights(one_step)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_defaults_config_and_save_load(tmp_path):
    optimizer = keras_lars.CLARS()
    assert optimizer.eta == 0.01 and optimizer.momentum == 0.9 and optimizer.weight_decay == 0.0
    config = optimizer.get_config()
    assert "trust_ratio_denominator" not in config and config["name"].startswith("clars")
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
    assert int(keras.ops.convert_to_numpy(restored.optimizer.iterations)) == 3
    _assert_same_state(restored, model)
    keras_lars.attach_per_example_norms(restored)
    restored.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    _assert_same_state(restored, model)


def test_saved_weights_hold_no_probes_and_load_into_a_plain_model(tmp_path):
    import h5py

    model = _fit_weights(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3))
    assert len(model.trainable_variables) > len(_weights(model))  # probes while attached
    path = str(tmp_path / "clars.weights.h5")
    model.save_weights(path)
    names = []
    with h5py.File(path) as f:
        f.visit(names.append)
    assert names and not any("per_example" in n or "probe" in n for n in names)
    plain = _model()
    plain.load_weights(path)
    assert len(plain.trainable_variables) == len(_weights(model))
    for a, b in zip(plain.trainable_variables, _weights(model)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_one_pass_norms_in_a_callback_during_fit():
    # The one-pass functions attach temporary taps without variables, so the
    # compiled train function of an attached model stays valid mid-fit.
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            norms, _, _ = keras_lars.per_example_gradient_norms(self.model, X[:4], Y[:4], _loss())
            seen.append([float(n) for n in norms])

    model = _compiled(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3))
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[Probe()])
    assert len(seen) == 2 and all(np.isfinite(seen[-1])) and seen[0] != seen[1]
    reference = _compiled(keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3))
    reference.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    _assert_same_state(model, reference)
