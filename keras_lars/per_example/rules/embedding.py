"""Embedding: example i's gradient adds d_p to row ids_p for every position p
(a ghost norm over positions)."""

import math

import keras
from keras import ops

from keras_lars.per_example.registry import rule


def lookup_forward(layer, tap, inputs):
    if inputs.dtype != "int32" and inputs.dtype != "int64":
        inputs = ops.cast(inputs, "int32")
    outputs = tap(ops.take(layer.embeddings, inputs, axis=0), inputs)
    return ops.cast(outputs, dtype=layer.compute_dtype)


@rule(keras.layers.Embedding, forward=lookup_forward)
def lookup_squared_norms(layer, ids, d, method):
    # Example i's gradient adds d_p to row ids_p for every position p, so
    # ||g_i||^2 = sum_{p,q} [ids_p == ids_q] <d_p, d_q> (ghost norm).
    positions = math.prod(ids.shape[1:])
    ids = ops.reshape(ids, (-1, positions))
    d = ops.reshape(ops.cast(d, "float32"), (-1, positions, d.shape[-1]))
    same = ops.cast(ops.equal(ids[:, :, None], ids[:, None, :]), "float32")
    return (ops.sum(same * ops.einsum("btk,bsk->bts", d, d), axis=(1, 2)),)
