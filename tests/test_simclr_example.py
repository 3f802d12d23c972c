"""examples/simclr: the NT-Xent loss against a NumPy transcription of
SimCLR's Eq. 1, LARS with SimCLR's settings on zero-norm and excluded
variables, and the example end to end (a few steps, then the probe) on the
JAX backend and on TensorFlow under mixed_bfloat16."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_lars
from examples.simclr import model as simclr_model
from examples.simclr import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nt_xent_numpy(z, tau):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    sim = z @ z.T / tau
    losses = []
    for i in range(n2):
        j = (i + n2 // 2) % n2
        others = [k for k in range(n2) if k != i]
        losses.append(-(sim[i, j] - np.log(np.sum(np.exp(sim[i, others])))))
    return np.mean(losses)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_is_simclr_equation_1(tau):
    z = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    loss = simclr_model.NTXent(tau)(np.zeros(4), z)
    np.testing.assert_allclose(float(loss), _nt_xent_numpy(z.astype("float64"), tau), rtol=1e-5)


def test_nt_xent_rejects_a_bad_temperature():
    with pytest.raises(ValueError, match="temperature must be > 0. Received: 0"):
        simclr_model.NTXent(0)


def test_simclr_lars_is_finite_on_zero_norm_and_excluded_variables():
    """SimCLR's LARS (norm_of_sum, weight decay 1e-6): a zero-initialised
    kernel (||w|| = 0), a kernel with a zero gradient (||g + beta w|| > 0 only
    through decay) and an all-zero variable with a zero gradient all step to
    finite values; a bias (excluded) takes plain momentum SGD."""
    optimizer = keras_lars.LARS(learning_rate=4.8, **recipes.SIMCLR)
    zero = keras.Variable(np.zeros((3, 2), "float32"), name="zero_kernel")
    still = keras.Variable(np.ones((3, 2), "float32"), name="still_kernel")
    dead = keras.Variable(np.zeros((2, 2), "float32"), name="dead_kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    grads = [np.full((3, 2), 0.5, "float32"), np.zeros((3, 2), "float32"), np.zeros((2, 2), "float32"),
             np.full((2,), 0.5, "float32")]
    optimizer.apply(grads, [zero, still, dead, bias])
    values = [np.array(v) for v in (zero, still, dead, bias)]
    assert all(np.isfinite(v).all() for v in values)
    np.testing.assert_allclose(values[0], -4.8 * 0.5)  # lambda = 1 at ||w|| = 0
    # ||w|| > 0, g = 0: the decayed gradient beta w is all there is, lambda = eta ||w|| / ||beta w||.
    np.testing.assert_allclose(values[1], 1 - 4.8 * (0.001 / 1e-6) * 1e-6, rtol=1e-6)
    np.testing.assert_array_equal(values[2], 0.0)
    np.testing.assert_allclose(values[3], 1 - 4.8 * 0.5, rtol=1e-6)  # excluded: no decay, no adaptation


def _run_example(backend, *flags):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "examples.simclr", "--batch", "64", "--steps", "3", "--epochs", "2",
               "--probe-epochs", "20", "--probe-examples", "2000", "--verbose", "0", *flags]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("backend, flags", [("tensorflow", ["--mixed-precision"]), ("jax", [])],
                         ids=["tensorflow-mixed_bfloat16", "jax"])
def test_the_example_pretrains_and_probes(backend, flags):
    """A few steps and the probe on both backends `make test` runs, the
    TensorFlow one under mixed_bfloat16 (float32 pretraining on TensorFlow
    runs in tests/test_experiments.py's quick suite)."""
    result = _run_example(backend, *flags)
    assert len(result["loss"]) == 2 and all(np.isfinite(result["loss"]))
    # The NT-Xent of 2 x 64 views starts near log(127) = 4.84.
    assert 3.0 < result["loss"][0] < 5.5
    assert 0.2 < result["probe_test_top1"] <= 1.0  # chance is 0.1


def test_clars_norms_under_a_loss_coupling_the_examples_are_the_rows_contributions():
    """What CLARS's n_k means under NT-Xent, where no example has a loss of
    its own: the sum over the batch's rows of the norms of each row's
    contribution to the batch gradient (the gradient through that row's
    forward pass). For a mean of per-example losses, row i contributes
    (1/B) grad l_i and the sum is Eq. 5's mean of per-example norms.
    Brute force: one copy of the layer's weights per row."""
    tf = pytest.importorskip("tensorflow")  # the brute force, on any Keras backend
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5)).astype("float32")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="proj")])
    loss = simclr_model.NTXent(0.5)
    kernel, bias = model.get_layer("proj").kernel, model.get_layer("proj").bias
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, np.zeros(6), loss, [kernel, bias])
    per_row = tf.Variable(np.repeat(np.array(kernel)[None], 6, axis=0))
    per_row_bias = tf.Variable(np.repeat(np.array(bias)[None], 6, axis=0))
    with tf.GradientTape() as tape:
        z = tf.math.l2_normalize(tf.einsum("bi,bij->bj", x, per_row) + per_row_bias, axis=1)
        logits = tf.where(tf.eye(6, dtype=tf.bool), -1e9, z @ tf.transpose(z) / 0.5)
        value = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits([3, 4, 5, 0, 1, 2], logits))
    g_kernel, g_bias = tape.gradient(value, [per_row, per_row_bias])
    expected = [np.sum(np.linalg.norm(np.reshape(g, (6, -1)), axis=1)) for g in (g_kernel, g_bias)]
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5)
