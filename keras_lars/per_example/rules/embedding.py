"""Embedding: example i's gradient adds d_p to row ids_p for every position p
(a ghost norm over positions). ReversibleEmbedding (Keras's, which
KerasHub's subclasses): the lookup, or with `reverse=True` logits
h @ embeddings^T (tied) or h @ reverse_embeddings (untied), a Dense-like
product whose kernel gradient is sum_t h_t (x) d_t."""

import math

import keras
from keras import ops

from keras_lars import _compat
from keras_lars.per_example.kernels import dense_squared_norms
from keras_lars.per_example.registry import rule


def lookup_forward(layer, tap, inputs):
    if inputs.dtype != "int32" and inputs.dtype != "int64":
        inputs = ops.cast(inputs, "int32")
    outputs = tap(ops.take(layer.embeddings, inputs, axis=0), inputs)
    return ops.cast(outputs, dtype=layer.compute_dtype)


@rule(keras.layers.Embedding, forward=lookup_forward)
def lookup_squared_norms(layer, ids, d, method):
    return (ids_squared_norms(ids, d),)


def ids_squared_norms(ids, d):
    """||g_i||^2 of a table whose example-i gradient adds d_p (the last axis
    of `d`) to row ids_p for every position p: sum_{p,q} [ids_p == ids_q]
    <d_p, d_q> (a ghost norm). `ids`: (B, ...) ints; `d`: ids' shape + (H,)."""
    positions = math.prod(ids.shape[1:])
    ids = ops.reshape(ids, (-1, positions))
    d = ops.reshape(ops.cast(d, "float32"), (-1, positions, d.shape[-1]))
    same = ops.cast(ops.equal(ids[:, :, None], ids[:, None, :]), "float32")
    return ops.sum(same * ops.einsum("btk,bsk->bts", d, d), axis=(1, 2))


def reversible_forward(layer, tap, inputs, reverse=False):
    if not reverse:
        outputs = lookup_forward(layer, tap, inputs)
        _compat.set_keras_mask(outputs, keras.layers.Embedding.compute_mask(layer, inputs))
        return outputs
    kernel = ops.transpose(layer.embeddings) if layer.tie_weights else layer.reverse_embeddings
    if layer.reverse_dtype is not None:
        inputs, kernel = ops.cast(inputs, layer.reverse_dtype), ops.cast(kernel, layer.reverse_dtype)
    logits = tap(ops.matmul(inputs, kernel), (inputs,))  # a tuple: the reverse mode
    if layer.logit_soft_cap is not None:
        logits = ops.multiply(ops.tanh(ops.divide(logits, layer.logit_soft_cap)), layer.logit_soft_cap)
    return logits


@rule(keras.layers.ReversibleEmbedding, forward=reversible_forward)
def reversible_squared_norms(layer, residuals, d, method):
    """Norms for (embeddings[, reverse_embeddings]): the lookup touches the
    table, the reverse product the table (tied) or its own matrix; a tied
    table's norm is its transpose's."""
    untied = not layer.tie_weights
    if not isinstance(residuals, tuple):  # the lookup: residuals are the ids
        return (lookup_squared_norms(layer, residuals, d, method)[0],) + ((None,) if untied else ())
    kernel, _ = dense_squared_norms(residuals[0], d, method)
    return (None, kernel) if untied else (kernel,)
