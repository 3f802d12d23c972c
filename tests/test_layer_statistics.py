"""Layer statistics of LARS and CLARS against NumPy (Algorithm 1, Eq. 5 with
brute-force per-example gradients), under distribution, accumulation, XLA and
loss scaling; the logger's files; the offline per-example squared norms."""

import csv
import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lars
from keras_lars import layer_statistics
from keras_lars.clars import CLARS_STATISTICS
from keras_lars.lars import STATISTICS
from numpy_lars import NumpyLARS
from test_lars import OPTIONS, _random_problem, _reference_for

L = keras.layers
RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 8, 8, 3)).astype("float32")
Y = RNG.integers(0, 5, size=16)
SHAPES = [(7,), (5, 3), (3, 3, 4), (3, 3, 2, 5), (4, 2)]
RTOL = 1e-5


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _model():
    keras.utils.set_random_seed(1)
    inputs = x = keras.Input((8, 8, 3))
    for layer in [
        L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv"),
        L.Flatten(),
        L.Dense(8, activation="tanh", name="hidden"),
        L.Dense(5, name="head"),
    ]:
        x = layer(x)
    return keras.Model(inputs, x)


def _compiled(make_optimizer, strategy=None, jit_compile=False):
    with (strategy or tf.distribute.get_strategy()).scope():
        model = _model()
        model.compile(optimizer=make_optimizer(), loss=_loss(), jit_compile=jit_compile)
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if isinstance(inner, keras_lars.CLARS):
        keras_lars.attach_per_example_norms(model)
    return model


def _assert_statistics_close(got, want, names, err_msg=""):
    for name in names:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=0, err_msg=f"{name} {err_msg}")


# LARS: every option that changes lambda (and those that change delta w), with
# one variable excluded from adaptation and decay, and one zero-initialised.
@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "paper")
def test_lars_statistics_match_numpy(options, jit_compile):
    weights, grads = _random_problem(SHAPES, steps=3)
    weights[-1] = np.zeros_like(weights[-1])  # ||w|| = 0: the guard's lambda = 1
    excluded = "v0"
    optimizer = keras_lars.LARS(
        learning_rate=0.5, exclude_from_weight_decay=[excluded], jit_compile=jit_compile,
        layer_statistics=True, **options,
    )
    variables = [keras.Variable(w.astype("float32"), name=f"v{i}") for i, w in enumerate(weights)]
    reference = _reference_for(options)
    adapt = [i != 0 for i in range(len(SHAPES))]
    ws = [w.astype(np.float64) for w in weights]
    vs = [np.zeros_like(w) if reference.m else None for w in ws]
    for t, step_grads in enumerate(grads, 1):
        want = [reference.statistics(ws[i], vs[i], g, 0.5, adapt[i], adapt[i]) for i, g in enumerate(step_grads)]
        for i, g in enumerate(step_grads):
            ws[i], vs[i] = reference.step(ws[i], vs[i], g, 0.5, adapt[i], adapt[i])
        optimizer.apply([g.astype("float32") for g in step_grads], variables)
        got = layer_statistics.read(optimizer)
        assert got.step == t and list(got.adapted) == adapt
        assert list(got.values) == list(STATISTICS)
        for i, shape in enumerate(SHAPES):
            finite = [n for n in STATISTICS if np.isfinite(want[i][n])]
            _assert_statistics_close({n: got.values[n][i] for n in finite}, want[i], finite, f"step {t} variable {shape}")
        if t == 1:  # ||w|| = 0 before the step
            assert got.values["update_ratio"][-1] == np.inf and got.values["trust_ratio"][-1] == 1.0
    if options.get("trust_clip"):
        assert np.any(got.values["clipped_trust_ratio"][1:4] != got.values["trust_ratio"][1:4])


def _weights(model):
    """The model's trainable variables without the per-example norm probes."""
    return [v for v in model.trainable_variables if not keras_lars.per_example.is_probe(v)]


def _brute_force(model, x, y):
    """Per variable: mean gradient, mean per-example norm and mean squared
    per-example norm, one example at a time."""
    variables = _weights(model)
    grads = [np.zeros(v.shape) for v in variables]
    norms, squares = np.zeros(len(variables)), np.zeros(len(variables))
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = _loss()(y[i : i + 1], model(x[i : i + 1], training=True))
        for j, g in enumerate(tape.gradient(loss, variables)):
            g = g.numpy().astype(np.float64)
            grads[j] += g / len(x)
            norms[j] += np.linalg.norm(g) / len(x)
            squares[j] += np.sum(g * g) / len(x)
    return grads, norms, squares


def _clars_reference_statistics(model, options, lr):
    reference = NumpyLARS(
        momentum=options.get("momentum", 0.9), weight_decay=options.get("weight_decay", 0.0), eta=0.01,
        trust_clip=options.get("trust_clip", False),
    )
    grads, norms, squares = _brute_force(model, X, Y)
    adapts = model.optimizer.adapts(_weights(model))
    momentums = [np.asarray(m.numpy(), np.float64) for m in model.optimizer.momentums if m is not None]
    momentums = momentums or [None] * len(adapts)
    want = []
    for j, v in enumerate(_weights(model)):
        w = v.numpy().astype(np.float64)
        values = reference.statistics(w, momentums[j], grads[j], lr, adapts[j], adapts[j],
                                      gradient_norm=norms[j] if adapts[j] else None)
        g_norm = np.linalg.norm(grads[j])
        values.update(
            mean_per_example_norm=norms[j], gradient_variance_ratio=g_norm / norms[j],
            mean_squared_per_example_norm=squares[j], gradient_variance_factor=squares[j] / g_norm**2,
        )
        want.append(values)
    return want


@pytest.mark.parametrize("options", [{"weight_decay": 1e-3}, {"weight_decay": 1e-3, "trust_clip": True, "momentum": 0.0}])
def test_clars_statistics_match_brute_force(options):
    lr = 2.0
    model = _compiled(lambda: keras_lars.CLARS(learning_rate=lr, layer_statistics=True, **options))
    for _ in range(2):
        want = _clars_reference_statistics(model, options, lr) if model.optimizer.built else None
        model.fit(X, Y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    got = layer_statistics.read(model.optimizer)
    assert list(got.values) == list(STATISTICS + CLARS_STATISTICS)
    for j, path in enumerate(got.variables):
        names = STATISTICS + (CLARS_STATISTICS if got.adapted[j] else ())
        names = [n for n in names if np.isfinite(want[j][n])]
        _assert_statistics_close({n: got.values[n][j] for n in names}, want[j], names, path)
        if got.adapted[j]:
            assert got.values["gradient_variance_factor"][j] > 1.5  # diverse examples
        else:
            assert np.isnan(got.values["gradient_variance_factor"][j])


def _fit(make_optimizer, strategy=None, epochs=2, jit_compile=False):
    """Two steps of batch 16 (one per epoch)."""
    model = _compiled(make_optimizer, strategy, jit_compile)
    model.fit(tf.data.Dataset.from_tensor_slices((X, Y)).batch(16), epochs=epochs, verbose=0)
    return model


def _clars(**kwargs):
    return lambda: keras_lars.CLARS(learning_rate=1.0, weight_decay=1e-3, layer_statistics=True, **kwargs)


def _lars(**kwargs):
    return lambda: keras_lars.LARS(learning_rate=1.0, weight_decay=1e-3, layer_statistics=True, **kwargs)


ALL = STATISTICS + CLARS_STATISTICS


def _assert_same_statistics(model, reference, names=ALL):
    got, want = layer_statistics.read(model.optimizer), layer_statistics.read(reference.optimizer)
    assert got.variables == want.variables
    _assert_statistics_close(got.values, want.values, names)


@pytest.mark.parametrize("make", [_lars(), _clars()], ids=["LARS", "CLARS"])
def test_two_replicas_record_the_global_batch_values_on_each(make, mirrored_strategy):
    two = _fit(make, mirrored_strategy)
    one = _fit(make)
    names = list(layer_statistics.read(one.optimizer).values)
    _assert_same_statistics(two, one, names)
    for variable in (v for v in two.optimizer.layer_statistics_variables if v is not None):
        first, second = mirrored_strategy.experimental_local_results(variable.value)
        np.testing.assert_array_equal(first.numpy(), second.numpy())


def test_gradient_accumulation_records_the_applied_step():
    accumulated = _compiled(_clars(gradient_accumulation_steps=2))
    accumulated.fit(X[:8], Y[:8], batch_size=8, epochs=1, verbose=0)
    for variable in (v for v in accumulated.optimizer.layer_statistics_variables if v is not None):
        np.testing.assert_array_equal(variable.numpy(), 0.0)  # no step applied yet
    accumulated.fit(X[8:], Y[8:], batch_size=8, epochs=1, verbose=0)
    whole = _compiled(_clars())
    whole.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    _assert_same_statistics(accumulated, whole)


def test_xla_and_loss_scaling_record_the_same_values():
    graph = _fit(_clars())
    _assert_same_statistics(_fit(_clars(), jit_compile=True), graph)
    scaled = _fit(lambda: keras.optimizers.LossScaleOptimizer(_clars()()))
    got = layer_statistics.read(scaled.optimizer)
    want = layer_statistics.read(graph.optimizer)
    _assert_statistics_close(got.values, want.values, ALL)


def test_off_creates_nothing_and_is_serialized():
    off = _fit(lambda: keras_lars.LARS(learning_rate=1.0, weight_decay=1e-3))
    on = _fit(_lars())
    extra = len(on.optimizer.variables) - len(off.optimizer.variables)
    assert extra == len(on.trainable_variables) and off.optimizer.layer_statistics_variables == []
    for a, b in zip(off.trainable_variables, on.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # recording never changes the update
    with pytest.raises(ValueError, match="layer_statistics=True; got LARS with layer_statistics=False"):
        layer_statistics.read(off.optimizer)
    with pytest.raises(ValueError, match="got SGD"):
        layer_statistics.read(keras.optimizers.SGD())
    with pytest.raises(ValueError, match=r"`layer_statistics` must be a bool. Received: 1"):
        keras_lars.LARS(layer_statistics=1)
    config = on.optimizer.get_config()
    assert config["layer_statistics"] is True
    assert keras_lars.CLARS.from_config(_clars()().get_config()).layer_statistics is True


def test_per_example_squared_norms_match_brute_force():
    model = _model()
    _, _, squares = _brute_force(model, X, Y)
    variables = model.trainable_variables
    squared, grads, _ = keras_lars.per_example_squared_norms(model, X, Y, _loss(), variables)
    brute = []
    for i in range(len(X)):
        with tf.GradientTape() as tape:
            loss = _loss()(Y[i : i + 1], model(X[i : i + 1], training=True))
        brute.append([np.sum(np.square(g.numpy().astype(np.float64))) for g in tape.gradient(loss, variables)])
    brute = np.array(brute)
    for j, v in enumerate(variables):
        np.testing.assert_allclose(squared[j].numpy(), brute[:, j], rtol=RTOL, err_msg=v.path)
        factor = layer_statistics.gradient_variance_factor(squared[j], grads[j])
        np.testing.assert_allclose(factor, squares[j] / np.sum(np.square(grads[j].numpy())), rtol=RTOL)
        assert factor >= 1.0


def _events(directory):
    tags = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_logger_writes_csv_and_tensorboard_every_n_steps(tmp_path):
    model = _compiled(_clars())
    logger = keras_lars.LayerStatisticsLogger(str(tmp_path), every_n_steps=3)
    model.fit(X, Y, batch_size=2, epochs=2, verbose=0, callbacks=[logger])  # 16 steps
    with open(tmp_path / layer_statistics.CSV_NAME) as f:
        rows = list(csv.DictReader(f))
    steps = sorted({int(r["step"]) for r in rows})
    assert steps == [3, 6, 9, 12, 15]
    assert len(rows) == 5 * len(_weights(model))
    last = layer_statistics.read(model.optimizer)  # step 16: the model moved on
    assert last.step == 16
    assert {r["variable"] for r in rows} == set(last.variables)
    tags = _events(str(tmp_path))
    assert tags["layers/log10_trust_ratio"] == steps
    assert tags["layers/log10_gradient_variance_factor"] == steps
    # Scalars for the first and the last adapted variables (the default).
    assert tags[f"trust_ratio/{last.variables[0]}"] == steps and last.variables[0].endswith("conv/kernel")
    assert tags[f"gradient_variance_factor/{last.variables[-2]}"] == steps and last.variables[-2].endswith("head/kernel")
    assert not any(t.endswith("hidden/kernel") for t in tags)
    with pytest.raises(ValueError, match="matches no variable"):
        layer_statistics.LayerStatisticsWriter(str(tmp_path / "x"), scalar_variables=["nope"]).write(model.optimizer)


def test_logger_refuses_an_optimizer_without_statistics(tmp_path):
    model = _compiled(lambda: keras_lars.LARS(learning_rate=1.0))
    with pytest.raises(ValueError, match="layer_statistics=True"):
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[keras_lars.LayerStatisticsLogger(str(tmp_path), every_n_steps=1)])
    with pytest.raises(ValueError, match="every_n_steps"):
        keras_lars.LayerStatisticsLogger(str(tmp_path), every_n_steps=0)


JAX_SCRIPT = r"""
import json, sys
import numpy as np, keras, keras_lars
from keras_lars import layer_statistics
weights, grads = json.loads(sys.argv[1])
optimizer = keras_lars.LARS(learning_rate=0.5, weight_decay=5e-4, trust_clip=True, layer_statistics=True)
variables = [keras.Variable(np.array(w, "float32")) for w in weights]
for step in grads:
    optimizer.apply([np.array(g, "float32") for g in step], variables)
print(json.dumps({k: v.tolist() for k, v in layer_statistics.read(optimizer).values.items()}))
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
model.compile(optimizer=keras_lars.LARS(learning_rate=0.1, layer_statistics=True), loss="mse")
logger = keras_lars.LayerStatisticsLogger(sys.argv[2], every_n_steps=2, tensorboard=False)
model.fit(np.ones((8, 4)), np.zeros((8, 3)), batch_size=2, verbose=0, callbacks=[logger])
print(json.dumps(layer_statistics.read(model.optimizer).values["weight_norm"].tolist()))
"""


def test_lars_statistics_on_the_jax_backend(tmp_path):
    pytest.importorskip("jax")
    shapes = [(5, 3), (3, 3, 2, 5), (7,)]
    weights, grads = _random_problem(shapes, steps=2)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    args = json.dumps([[w.tolist() for w in weights], [[g.tolist() for g in s] for s in grads]])
    out = subprocess.run([sys.executable, "-c", JAX_SCRIPT, args, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got, weight_norms = [json.loads(line) for line in out.stdout.strip().splitlines()[-2:]]
    reference = NumpyLARS(weight_decay=5e-4, trust_clip=True)
    ws, vs = [w.copy() for w in weights], [np.zeros_like(w) for w in weights]
    adapt = [len(s) > 1 for s in shapes]
    for step_grads in grads:
        want = [reference.statistics(ws[i], vs[i], g, 0.5, adapt[i], adapt[i]) for i, g in enumerate(step_grads)]
        for i, g in enumerate(step_grads):
            ws[i], vs[i] = reference.step(ws[i], vs[i], g, 0.5, adapt[i], adapt[i])
    for i in range(len(shapes)):
        _assert_statistics_close({n: got[n][i] for n in STATISTICS}, want[i], STATISTICS, f"variable {i}")
    with open(tmp_path / layer_statistics.CSV_NAME) as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["step"]) for r in rows}) == [2, 4]
    assert float(rows[0]["weight_norm"]) > 0 and weight_norms[0] > 0  # the synced state, not the initial zeros
