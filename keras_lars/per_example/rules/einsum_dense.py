"""EinsumDense (MultiHeadAttention's projections): the kernel gradient with
the batch axis kept, for equations whose first input axis is the batch."""

import keras
from keras import ops

from keras_lars.per_example.registry import rule


def _einsum_specs(layer):
    inputs, rest = layer.equation.split(",")
    kernel, outputs = rest.split("->")
    return inputs, kernel, outputs


def check(layer):
    inputs_spec, kernel_spec, outputs_spec = _einsum_specs(layer)
    if "." in layer.equation or inputs_spec[0] != outputs_spec[0] or inputs_spec[0] in kernel_spec:
        raise ValueError(
            f"Per-example norms of EinsumDense {layer.name!r} need an equation whose first input axis is "
            f"the batch, first in the output and not in the kernel, without '...'; got {layer.equation!r}. "
            "Exclude its variables from layer adaptation or pass unsupported_layers='vectorized'."
        )


def forward(layer, tap, inputs, training=None):
    x = tap(ops.einsum(layer.equation, inputs, layer.kernel), inputs)
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    return layer.activation(x) if layer.activation is not None else x


@rule(keras.layers.EinsumDense, forward=forward, check=check)
def squared_norms(layer, inputs, d, method):
    inputs_spec, kernel_spec, outputs_spec = _einsum_specs(layer)
    d = ops.cast(d, "float32")
    # The kernel gradient with the batch axis kept: B times the kernel's size.
    per_example = ops.einsum(f"{outputs_spec},{inputs_spec}->{inputs_spec[0]}{kernel_spec}", d,
                             ops.cast(inputs, "float32"))
    kernel = ops.sum(ops.square(per_example), axis=tuple(range(1, len(per_example.shape))))
    if layer.bias is None:
        return (kernel,)
    # The bias broadcasts over the output's leading axes and its own 1s.
    bias_shape = tuple(layer.bias.shape)
    lead = len(d.shape) - len(bias_shape)
    axes = tuple(range(1, lead)) + tuple(lead + j for j, n in enumerate(bias_shape) if n == 1 and d.shape[lead + j] != 1)
    summed = ops.sum(d, axis=axes) if axes else d
    return kernel, ops.sum(ops.square(summed), axis=tuple(range(1, len(summed.shape))))

