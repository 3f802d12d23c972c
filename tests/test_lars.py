"""LARS against the independent NumPy reference, plus its Keras integration."""

import re
import warnings

import keras
import ml_dtypes
import numpy as np
import pytest

import keras_lars
from backends import tensorflow_only
from keras_lars import LARS
from keras_lars.schedules import WarmupPolynomialDecay
from numpy_lars import NumpyLARS

SHAPES = [(), (7,), (5, 3), (3, 3, 4), (3, 3, 2, 5)]


def _random_problem(shapes, steps, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s) * scale for s in shapes]
    grads = [[rng.normal(size=s) * 0.1 for s in shapes] for _ in range(steps)]
    return weights, grads


def _run_keras(optimizer, weights, grads, dtype="float32"):
    variables = [keras.Variable(w.astype(dtype), name=f"v{i}") for i, w in enumerate(weights)]
    for step_grads in grads:
        optimizer.apply([g.astype(dtype) for g in step_grads], variables)
    return [np.asarray(keras.ops.convert_to_numpy(v)).astype(np.float64) for v in variables]


def _run_reference(reference, weights, grads, lr_at, adapt=None, decay=None, round_to=None):
    ws = [np.asarray(w, np.float64) for w in weights]
    vs = [np.zeros_like(w) if reference.m else None for w in ws]
    adapt = adapt or [True] * len(ws)
    decay = decay or [True] * len(ws)
    for t, step_grads in enumerate(grads):
        for i, g in enumerate(step_grads):
            ws[i], vs[i] = reference.step(ws[i], vs[i], g, lr_at(t), adapt[i], decay[i])
            if round_to is not None:  # emulate low-precision storage of w and v
                ws[i] = ws[i].astype(round_to).astype(np.float64)
                vs[i] = None if vs[i] is None else vs[i].astype(round_to).astype(np.float64)
    return ws


OPTIONS = [
    dict(),
    dict(weight_decay=5e-4),
    dict(weight_decay=5e-4, nesterov=True),
    dict(weight_decay=5e-4, epsilon=1e-3),
    dict(weight_decay=5e-4, trust_ratio_denominator="norm_of_sum"),
    dict(weight_decay=5e-4, trust_clip=True),
    dict(weight_decay=5e-4, momentum=0.0),
    dict(weight_decay=1e-4, eta=0.02, momentum=0.95),
]


def _reference_for(options):
    return NumpyLARS(
        momentum=options.get("momentum", 0.9),
        weight_decay=options.get("weight_decay", 0.0),
        eta=options.get("eta", 0.001),
        epsilon=options.get("epsilon", 0.0),
        nesterov=options.get("nesterov", False),
        denominator=options.get("trust_ratio_denominator", "sum_of_norms"),
        trust_clip=options.get("trust_clip", False),
    )


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "paper")
def test_matches_numpy_reference_float32(options, jit_compile):
    weights, grads = _random_problem(SHAPES, steps=12)
    optimizer = LARS(learning_rate=2.0, exclude_from_weight_decay=[], jit_compile=jit_compile, **options)
    got = _run_keras(optimizer, weights, grads)
    want = _run_reference(_reference_for(options), weights, grads, lambda t: 2.0)
    for g, w, s in zip(got, want, SHAPES):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * np.abs(w).max(), err_msg=f"shape {s}")
        # The update must actually have moved the weights by much more than the tolerance.
        assert np.abs(g - weights[SHAPES.index(s)]).max() > 1e-4


def test_matches_numpy_reference_with_schedule():
    schedule = WarmupPolynomialDecay(3.0, warmup_steps=4, train_steps=12, end_learning_rate=1e-4)
    weights, grads = _random_problem(SHAPES[2:], steps=12, seed=1)
    got = _run_keras(LARS(schedule, weight_decay=1e-4), weights, grads)
    lr_at = lambda t: float(keras.ops.convert_to_numpy(schedule(t)))  # noqa: E731
    want = _run_reference(_reference_for(dict(weight_decay=1e-4)), weights, grads, lr_at)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * np.abs(w).max())


@pytest.mark.parametrize("dtype,rtol", [("float16", 2e-3), ("bfloat16", 1.6e-2)])
def test_low_precision_variables(dtype, rtol):
    np_dtype = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    weights, grads = _random_problem(SHAPES[1:], steps=10, seed=2)
    weights = [w.astype(np_dtype).astype(np.float64) for w in weights]
    grads = [[g.astype(np_dtype).astype(np.float64) for g in s] for s in grads]
    got = _run_keras(LARS(learning_rate=2.0, weight_decay=5e-4), weights, grads, dtype=dtype)
    reference = _reference_for(dict(weight_decay=5e-4))
    want = _run_reference(reference, weights, grads, lambda t: 2.0, adapt=[False] + [True] * 3,
                          decay=[False] + [True] * 3, round_to=np_dtype)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max())


def test_low_precision_norms_do_not_overflow():
    # ||w||^2 = 4000 * 300^2 = 3.6e8 overflows float16 (max 65504); the trust
    # ratio must still be finite because norms are taken in float32.
    w = np.full((4000,), 300.0)
    g = np.full((4000,), 1.0)
    got = _run_keras(LARS(learning_rate=1.0, momentum=0.0, exclude_from_weight_decay=[]), [w], [[g]], dtype="float16")
    ratio = 0.001 * 300.0 / 1.0
    np.testing.assert_allclose(got[0], np.float16(300.0 - ratio), rtol=1e-3)


def _dense_model(seed=0, bias_initializer="zeros", kernel_initializer=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, activation="tanh", name="hidden", bias_initializer=bias_initializer,
                           kernel_initializer=kernel_initializer or "glorot_uniform")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def _flags(optimizer, model):
    by_path = {}
    for v in model.trainable_variables:
        i = optimizer._get_variable_index(v)
        by_path[v.path] = (optimizer._adapts[i], optimizer._uses_decay[i])
    return by_path


def test_default_exclusions_are_rank_at_most_1():
    model = _dense_model()
    optimizer = LARS(weight_decay=1e-4)
    optimizer.build(model.trainable_variables)
    flags = _flags(optimizer, model)
    assert flags == {
        "hidden/kernel": (True, True),
        "hidden/bias": (False, False),
        "bn/gamma": (False, False),
        "bn/beta": (False, False),
        "out/kernel": (True, True),
        "out/bias": (False, False),
    }


def test_excluded_variable_gets_plain_momentum_sgd():
    model = _dense_model()
    optimizer = LARS(learning_rate=0.5, weight_decay=1e-2)
    variables = model.trainable_variables
    bias = [v for v in variables if v.path == "out/bias"][0]
    grads = [np.ones(v.shape, "float32") for v in variables]
    before = np.array(bias.numpy())
    optimizer.apply(grads, variables)
    optimizer.apply(grads, variables)
    # v1 = 0.5 * g, v2 = 0.9 * v1 + 0.5 * g; no decay, no trust ratio.
    np.testing.assert_allclose(bias.numpy(), before - (0.5 + 0.9 * 0.5 + 0.5), rtol=1e-6)


@pytest.mark.parametrize(
    "rules_for",
    [
        lambda m: ["hidden/", "bias$"],
        lambda m: [m.get_layer("hidden").kernel, m.get_layer("hidden").bias, m.get_layer("out").bias],
        lambda m: lambda v: v.path.startswith("hidden") or v.name == "bias",
        lambda m: ["hidden/kernel", m.get_layer("hidden").bias, lambda v: v.name == "bias"],
    ],
    ids=["regex", "variables", "predicate", "mixed"],
)
def test_user_exclusion_forms(rules_for):
    model = _dense_model()
    optimizer = LARS(weight_decay=1e-4, exclude_from_weight_decay=rules_for(model))
    optimizer.build(model.trainable_variables)
    flags = _flags(optimizer, model)
    assert flags["hidden/kernel"] == (False, False)
    assert flags["hidden/bias"] == (False, False)
    assert flags["out/bias"] == (False, False)
    # An explicit list replaces the default: BN gamma/beta are adapted and decayed.
    assert flags["bn/gamma"] == (True, True)
    assert flags["out/kernel"] == (True, True)


def test_separate_adaptation_rules():
    model = _dense_model()
    optimizer = LARS(weight_decay=1e-4, exclude_from_weight_decay=["bias$"], exclude_from_layer_adaptation=["out/"])
    optimizer.build(model.trainable_variables)
    flags = _flags(optimizer, model)
    assert flags["hidden/bias"] == (True, False)
    assert flags["out/kernel"] == (False, True)
    assert flags["out/bias"] == (False, False)
    assert flags["hidden/kernel"] == (True, True)


def test_empty_rules_exclude_nothing():
    model = _dense_model()
    optimizer = LARS(exclude_from_weight_decay=[])
    optimizer.build(model.trainable_variables)
    assert all(f == (True, True) for f in _flags(optimizer, model).values())


def test_keras_exclude_from_weight_decay_method():
    model = _dense_model()
    optimizer = LARS(weight_decay=1e-4)
    optimizer.exclude_from_weight_decay(var_names=["out/kernel"])
    optimizer.build(model.trainable_variables)
    flags = _flags(optimizer, model)
    assert flags["out/kernel"] == (False, False)
    assert flags["hidden/kernel"] == (True, True)
    assert flags["out/bias"] == (False, False)  # the default rule still holds
    # Serialized with the default rule made explicit; restores the same rules.
    restored = LARS.from_config(optimizer.get_config())
    fresh = _dense_model()
    restored.build(fresh.trainable_variables)
    assert _flags(restored, fresh) == flags
    with pytest.raises(ValueError, match="before the optimizer is built"):
        optimizer.exclude_from_weight_decay(var_names=["x"])
    # Each replica of a tf.distribute step repeats the call (Keras's
    # optimizer_distribute_test): a rule already held is accepted.
    optimizer.exclude_from_weight_decay(var_names=["out/kernel"])
    assert _flags(optimizer, model) == flags


def test_unmatched_pattern_warns_with_its_name():
    model = _dense_model()
    optimizer = LARS(exclude_from_weight_decay=["batch_normalization", "bias$"])
    with pytest.warns(UserWarning, match=re.escape("'batch_normalization'")):
        optimizer.build(model.trainable_variables)


def test_matched_patterns_do_not_warn():
    model = _dense_model()
    optimizer = LARS(exclude_from_weight_decay=["bn/", "bias$"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.build(model.trainable_variables)


def test_zero_norms_still_move():
    # A zero-initialised bias (adapted here) and a zero kernel: ||w|| = 0 gives
    # lambda = 1, so both take a plain SGD step instead of freezing.
    model = _dense_model(kernel_initializer="zeros")
    optimizer = LARS(learning_rate=0.1, momentum=0.0, weight_decay=1e-4, exclude_from_weight_decay=[])
    hidden = model.get_layer("hidden")
    grads = [np.ones(v.shape, "float32") for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)
    np.testing.assert_allclose(hidden.kernel.numpy(), -0.1, rtol=1e-6)
    np.testing.assert_allclose(hidden.bias.numpy(), -0.1, rtol=1e-6)


def test_zero_gradient_gives_unit_ratio():
    w = np.full((4,), 2.0)
    got = _run_keras(LARS(learning_rate=0.1, momentum=0.0, weight_decay=0.5, exclude_from_weight_decay=[]),
                     [w], [[np.zeros(4)]])
    # lambda = 1 and the step is the decay term alone: 0.1 * 0.5 * 2.
    np.testing.assert_allclose(got[0], 2.0 - 0.1, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(learning_rate=-0.1), "learning_rate"),
        (dict(learning_rate="fast"), "learning_rate"),
        (dict(eta=0.0), "eta"),
        (dict(eta=-1e-3), "eta"),
        (dict(momentum=1.0), r"momentum.*\[0, 1\)"),
        (dict(momentum=-0.1), "momentum"),
        (dict(epsilon=-1e-9), "epsilon"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(trust_ratio_denominator="norm"), "trust_ratio_denominator"),
        (dict(nesterov="yes"), "nesterov"),
        (dict(trust_clip=1), "trust_clip"),
        (dict(exclude_from_weight_decay=["(unclosed"]), r"\(unclosed"),
        (dict(gradient_accumulation_steps=1), "gradient_accumulation_steps"),
        # Non-finite values would turn every weight into NaN at the first step.
        (dict(eta=float("inf")), r"`eta` must be a finite float > 0. Received: eta=inf"),
        (dict(eta=float("nan")), r"eta=nan"),
        (dict(learning_rate=float("inf")), r"learning_rate=inf"),
        (dict(weight_decay=float("inf")), r"weight_decay=inf"),
        (dict(epsilon=float("inf")), r"epsilon=inf"),
        (dict(momentum=float("nan")), r"momentum=nan"),
    ],
)
@pytest.mark.parametrize("optimizer_cls", [LARS, keras_lars.CLARS])
def test_bad_hyperparameters_raise_at_construction(optimizer_cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimizer_cls(**kwargs)


def test_non_finite_schedule_arguments_raise():
    with pytest.raises(ValueError, match="base_learning_rate=inf"):
        WarmupPolynomialDecay(base_learning_rate=float("inf"), warmup_steps=0, train_steps=10)


def test_bad_rule_type_raises():
    with pytest.raises(TypeError, match="exclude_from_layer_adaptation"):
        LARS(exclude_from_layer_adaptation=[3])


@keras.saving.register_keras_serializable(package="keras_lars_tests")
def is_output_layer(variable):
    return variable.path.startswith("out/")


def test_config_round_trip():
    model = _dense_model()
    schedule = WarmupPolynomialDecay(5.0, warmup_steps=10, train_steps=100, end_learning_rate=1e-3)
    optimizer = LARS(
        learning_rate=schedule, momentum=0.8, weight_decay=2e-4, eta=0.01, epsilon=1e-9, nesterov=True,
        trust_ratio_denominator="norm_of_sum", trust_clip=True,
        exclude_from_weight_decay=["bias$", model.get_layer("hidden").kernel],
        exclude_from_layer_adaptation=[is_output_layer], jit_compile=False,
        clipnorm=1.0, use_ema=True, ema_momentum=0.9, loss_scale_factor=2.0, gradient_accumulation_steps=3,
    )
    config = optimizer.get_config()
    assert config["exclude_from_weight_decay"] == ["bias$", "^hidden/kernel$"]
    restored = LARS.from_config(keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer)).get_config())
    assert restored.get_config() == config
    for key in ("momentum", "weight_decay", "eta", "epsilon", "nesterov", "trust_ratio_denominator", "trust_clip",
                "clipnorm", "use_ema", "ema_momentum", "loss_scale_factor", "gradient_accumulation_steps"):
        assert getattr(restored, key) == getattr(optimizer, key), key
    assert isinstance(restored._learning_rate, WarmupPolynomialDecay)
    # The rules behave the same after the round trip.
    fresh = _dense_model()
    optimizer.build(model.trainable_variables)
    restored.build(fresh.trainable_variables)
    assert _flags(optimizer, model) == _flags(restored, fresh)
    assert _flags(restored, fresh)["hidden/kernel"] == (True, False)


def _compile(model, optimizer, jit_compile=False):
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return model


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.normal(size=(n, 3)).astype("float32")


def test_save_load_continues_with_identical_state(tmp_path):
    x, y = _data()
    model = _compile(_dense_model(), LARS(WarmupPolynomialDecay(1.0, 2, 20), weight_decay=1e-4,
                                         exclude_from_weight_decay=["bias$", "bn/"]))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, LARS)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 4
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert any(np.abs(m.numpy()).max() > 0 for m in loaded.optimizer.momentums)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def _train(optimizer, jit_compile, steps=6, model_fn=_dense_model):
    x, y = _data()
    model = _compile(model_fn(), optimizer, jit_compile)
    model.fit(x, y, batch_size=16, epochs=steps // 4, shuffle=False, verbose=0)
    return [w.numpy() for w in model.trainable_weights]


def test_xla_paths_agree():
    """fit(jit_compile=True) (update inlined in the compiled step), the update
    compiled on its own, and no XLA at all give the same weights."""
    kwargs = dict(learning_rate=1.0, weight_decay=1e-3)
    whole_step = _train(LARS(**kwargs), jit_compile=True, steps=8)
    update_only = _train(LARS(**kwargs), jit_compile=False, steps=8)
    no_xla = _train(LARS(jit_compile=False, **kwargs), jit_compile=False, steps=8)
    initial = [w.numpy() for w in _dense_model().trainable_weights]
    for a, b, c, w0 in zip(whole_step, update_only, no_xla, initial):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-6)
        assert np.abs(c - w0).max() > 1e-3


def test_base_class_arguments_keep_working():
    weights, grads = _random_problem([(4, 3)], steps=4, seed=3)
    base = dict(learning_rate=1.0, weight_decay=1e-3, exclude_from_weight_decay=[])
    plain = lambda gs: _run_keras(LARS(**base), weights, gs)[0]  # noqa: E731

    # gradient_accumulation_steps=2: two micro-steps == one step on their mean.
    accumulated = _run_keras(LARS(gradient_accumulation_steps=2, **base), weights, grads)[0]
    means = [[(a[0] + b[0]) / 2] for a, b in zip(grads[::2], grads[1::2])]
    np.testing.assert_allclose(accumulated, plain(means), rtol=1e-6)

    # loss_scale_factor=s: gradients of the scaled loss are unscaled first.
    scaled = _run_keras(LARS(loss_scale_factor=64.0, **base), weights, [[g[0] * 64.0] for g in grads])[0]
    np.testing.assert_allclose(scaled, plain(grads), rtol=1e-6)

    # clipnorm acts on the gradient before the trust ratio.
    clipped = _run_keras(LARS(clipnorm=0.05, **base), weights, grads)[0]
    by_hand = [[g[0] * min(1.0, 0.05 / np.linalg.norm(g[0]))] for g in grads]
    np.testing.assert_allclose(clipped, plain(by_hand), rtol=1e-5)
    # With eta * ||w|| / (||g|| + ...) the step barely depends on ||g||, but it does:
    assert np.abs(clipped - plain(grads)).max() > 1e-7

    # use_ema: Keras starts the average at the first step's weights, then blends.
    optimizer = LARS(use_ema=True, ema_momentum=0.5, **base)
    variable = keras.Variable(weights[0].astype("float32"))
    optimizer.apply([grads[0][0].astype("float32")], [variable])
    first = variable.numpy().copy()
    optimizer.apply([grads[1][0].astype("float32")], [variable])
    average = optimizer._model_variables_moving_average[0].numpy()
    np.testing.assert_allclose(average, 0.5 * first + 0.5 * variable.numpy(), rtol=1e-6)
    np.testing.assert_allclose(variable.numpy(), plain(grads[:2]), rtol=1e-6)


@tensorflow_only
def test_sparse_embedding_gradients_match_dense():
    import tensorflow as tf

    def run(densify, jit_compile):
        keras.utils.set_random_seed(0)
        layer = keras.layers.Embedding(10, 4)
        layer.build((None, 3))
        optimizer = LARS(1.0, exclude_from_weight_decay=[], jit_compile=jit_compile)
        for ids in ([[1, 2, 3]], [[3, 4, 4]]):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(np.array(ids)) ** 2)
            (grad,) = tape.gradient(loss, layer.trainable_variables)
            assert isinstance(grad, tf.IndexedSlices)
            optimizer.apply([tf.convert_to_tensor(grad) if densify else grad], layer.trainable_variables)
        return layer.embeddings.numpy()

    dense = run(True, False)
    for jit_compile in (True, False):
        np.testing.assert_allclose(run(False, jit_compile), dense, rtol=1e-6)


def test_default_names_are_unique_like_keras_optimizers():
    """name=None as in Keras: unique snake-case names, so two optimizers'
    variables never share a path."""
    first, second, clars = LARS(), LARS(), keras_lars.CLARS()
    assert first.name.startswith("lars") and clars.name.startswith("clars")
    assert first.name != second.name
    assert first.iterations.path != second.iterations.path
    assert LARS(name="mine").name == "mine"


@tensorflow_only
@pytest.mark.parametrize("layer_statistics", [False, True])
def test_raw_tf_variables_take_exclusions_and_statistics(layer_statistics):
    """A raw tf.Variable (no `.path`) among Keras variables: regex rules
    match its name, and layer statistics are kept for it."""
    import tensorflow as tf

    raw = tf.Variable(np.ones((3, 2), "float32"), name="raw_matrix")
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    optimizer = LARS(1.0, weight_decay=0.1, exclude_from_weight_decay=["raw_matrix"], layer_statistics=layer_statistics)
    grads = [np.full((3, 2), 0.5, "float32"), np.full((2, 2), 0.5, "float32")]
    optimizer.apply(grads, [raw, kernel])
    # Excluded from decay (and, following it, from adaptation): plain SGD, w -= lr * g.
    np.testing.assert_allclose(raw.numpy(), 0.5, rtol=1e-6)
    assert not np.allclose(kernel.numpy(), 0.5)
    if layer_statistics:
        stats = keras_lars.layer_statistics.read(optimizer)
        assert stats.variables == ["raw_matrix", "kernel"]
        np.testing.assert_allclose(stats.values["gradient_norm"][0], np.sqrt(6 * 0.25), rtol=1e-6)


def _sparse_gradient(values, indices, shape):
    """A sparse gradient of this backend: tf.IndexedSlices, a JAX BCOO or a
    torch sparse COO tensor."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.sparse_coo_tensor(torch.tensor([list(indices)]), torch.as_tensor(values), shape)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.IndexedSlices(values, indices, shape)
    import jax.experimental.sparse as jax_sparse

    return jax_sparse.BCOO((values, tuple((i,) for i in indices)), shape=shape)


@pytest.mark.parametrize("loss_scale", [
    False,
    pytest.param(True, marks=pytest.mark.skipif(
        keras.backend.backend() == "torch",
        reason="Keras's LossScaleOptimizer cannot check a torch sparse gradient for finiteness "
               "('aten::ne.Scalar' has no SparseCPU kernel), with any optimizer")),
])
def test_sparse_gradients_with_repeated_indices_match_dense(loss_scale):
    """As Keras's optimizer_sparse_test (stateless on JAX, as there): row 2
    appears twice, and the trust ratio needs the norm of the summed rows.
    On JAX a BCOO once failed with "sparse rule for gt is not implemented"
    (and under LossScaleOptimizer "bcoo_sum_duplicates: nse must be specified")."""

    def make():
        optimizer = LARS(1.0, weight_decay=1e-3, exclude_from_weight_decay=[])
        return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scale else optimizer

    results = []
    for sparse in (True, False):
        optimizer = make()
        variable = keras.Variable(np.ones((5, 3, 2), "float32"))
        values = [variable.value]
        stateless = keras.backend.backend() == "jax"
        if stateless:
            optimizer.build([variable])
        state = optimizer.variables
        for i in range(4):
            grad = _sparse_gradient(keras.ops.ones((4, 3, 2)) * (10.0 - i), (0, 2, 4, 2), (5, 3, 2))
            if not sparse:
                grad = keras.ops.convert_to_tensor(grad, sparse=False)
            if stateless:
                values, state = optimizer.stateless_apply(state, [grad], values)
            else:
                optimizer.apply([grad], [variable])
                values = [variable.value]
        results.append(np.asarray(keras.ops.convert_to_numpy(values[0])))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
    assert not np.allclose(results[0], 1.0)


def _norms_after_one_step(size, mode):
    """(||w||, ||g||) as LARS's layer statistics record them for a tensor of
    `size` elements after one apply in `mode`, with the float64 norms."""
    rng = np.random.default_rng(size)
    # All of one sign: a float32 accumulator drifts most when nothing cancels.
    w = (np.abs(rng.standard_normal(size, dtype=np.float32)) + 0.5).astype("float32")
    g = (np.abs(rng.standard_normal(size, dtype=np.float32)) * 0.1).astype("float32")
    optimizer = LARS(0.1, layer_statistics=True, exclude_from_weight_decay=[], jit_compile=mode != "tf_eager_no_jit")
    variable = keras.Variable(w)
    optimizer.build([variable])
    if mode == "jax_jit":
        import jax

        apply = jax.jit(lambda state, weights, grads: optimizer.stateless_apply(state, grads, weights))
        _, state = apply([v.value for v in optimizer.variables], [variable.value], [g])
        statistics = state[[v.path for v in optimizer.variables].index(optimizer.layer_statistics_variables[0].path)]
    else:
        if mode.startswith("tf_function"):
            import tensorflow as tf

            tf.function(lambda grad: optimizer.apply([grad], [variable]), jit_compile=mode == "tf_function_xla")(g)
        else:
            optimizer.apply([g], [variable])
        statistics = optimizer.layer_statistics_variables[0]
    statistics = np.asarray(keras.ops.convert_to_numpy(statistics))
    exact = [np.sqrt(np.sum(x.astype(np.float64) ** 2)) for x in (w, g)]
    return statistics[:2], exact


NORM_MODES = {
    "tensorflow": ["tf_eager", "tf_eager_no_jit", "tf_function", "tf_function_xla"],
    "jax": ["jax_eager", "jax_jit"],
    "torch": ["torch_eager"],
}[keras.backend.backend()]


@pytest.mark.parametrize("mode", NORM_MODES)
@pytest.mark.parametrize("size", [2**20, 2**24, 2**26])
def test_norms_exact_at_every_size(size, mode):
    """||w|| and ||g|| to 1e-6 relative at 1M, 16.8M and 67M elements (an
    embedding, VGG16's fc1), outside XLA, inside the update's XLA function
    and inside an XLA-compiled step. Before 2026-12-01 the norms outside
    XLA were a float32 GEMV: -1e-5 at 2^20 elements, -6.6e-4 at 2^24."""
    got, exact = _norms_after_one_step(size, mode)
    np.testing.assert_allclose(got, exact, rtol=1e-6)


def test_trust_ratio_is_the_papers_formula_with_its_zero_guard():
    """`keras_lars.update.trust_ratio` against the formulas by hand: LARS's
    Eq. 6 (sum of norms), Model Garden's norm of the sum, CLARS's n_k in
    place of ||g||; lambda = 1 where ||w|| or the gradient norm is 0; and
    LARC's clip min(lambda / gamma, 1)."""
    from keras_lars.update import larc_clip, trust_ratio

    def value(w, n, denominator="sum_of_norms"):
        return float(trust_ratio(np.float32(w), np.float32(n), eta=0.001, weight_decay=0.01, epsilon=1e-5,
                                 denominator=denominator))

    np.testing.assert_allclose(value(3.0, 0.5), 0.001 * 3.0 / (0.5 + 0.01 * 3.0 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(value(3.0, 0.5, "norm_of_sum"), 0.001 * 3.0 / (0.5 + 1e-5), rtol=1e-6)
    assert value(0.0, 0.5) == 1.0 and value(3.0, 0.0) == 1.0
    np.testing.assert_allclose(float(larc_clip(np.float32(0.004), np.float32(0.01))), 0.4, rtol=1e-6)
    assert float(larc_clip(np.float32(0.5), np.float32(0.01))) == 1.0
    assert float(larc_clip(np.float32(0.5), np.float32(0.0))) == 1.0
