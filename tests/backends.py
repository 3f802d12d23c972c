"""Backend helpers for tests that run on TensorFlow, JAX and PyTorch (`make
test` runs them again with KERAS_BACKEND=jax and KERAS_BACKEND=torch)."""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow-specific")
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="JAX-specific")
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="PyTorch-specific")


def gradients(model, loss_fn, variables):
    """d loss_fn() / d v for each of `variables` (trainable variables of
    `model`), by plain autodiff: `tf.GradientTape`, `jax.grad` of the
    model's stateless call, or `torch.autograd.grad`. NumPy float64 arrays."""
    if BACKEND == "torch":
        import torch

        values = [v.value for v in variables]
        grads = torch.autograd.grad(loss_fn(), values, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, values)]
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, variables)
        grads = [np.zeros(v.shape) if g is None else g for g, v in zip(grads, variables)]  # not reached: zero
    else:
        import jax

        trainable = model.trainable_variables
        index = {id(v): i for i, v in enumerate(trainable)}

        def loss_of(values):
            with keras.StatelessScope(state_mapping=list(zip(trainable, values))):
                return loss_fn()

        all_grads = jax.grad(loss_of)([v.value for v in trainable])
        grads = [all_grads[index[id(v)]] for v in variables]
    return [np.asarray(keras.ops.convert_to_numpy(g), np.float64) for g in grads]


def per_example_gradients(model, loss, x, y, variables, training=True):
    """Each example's gradient, computed alone (one autodiff pass per
    example): a list over examples of lists over `variables`. `x` may be a
    structure of arrays (a model with several inputs)."""
    return [
        gradients(model, lambda i=i: loss(y[i : i + 1], model(keras.tree.map_structure(lambda t: t[i : i + 1], x),
                                                              training=training)), variables)
        for i in range(len(y))
    ]
