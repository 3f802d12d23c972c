"""Dense: z = x @ kernel (+ bias); example i's kernel gradient is
sum_t x_{i,t} (x) d_{i,t} (`kernels.dense_squared_norms`)."""

import keras
from keras import ops

from keras_lars.per_example.kernels import dense_squared_norms
from keras_lars.per_example.registry import rule


def forward(layer, tap, inputs, training=None):
    x = tap(ops.matmul(inputs, layer.kernel), inputs)
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    return layer.activation(x) if layer.activation is not None else x


@rule(keras.layers.Dense, forward=forward)
def squared_norms(layer, inputs, d, method):
    kernel, bias = dense_squared_norms(inputs, d, method)
    return (kernel, bias) if layer.bias is not None else (kernel,)
