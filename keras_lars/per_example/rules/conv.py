"""Convolutions: Conv1D/2D/3D (causal, strided, dilated, grouped,
channels_first), DepthwiseConv1D/2D, SeparableConv1D/2D and
Conv1D/2D/3DTranspose, the tap on the output before the bias
(`kernels.conv_squared_norms`)."""

import keras
from keras import ops

from keras_lars import _compat
from keras_lars.per_example.kernels import conv_squared_norms, dense_squared_norms
from keras_lars.per_example.registry import rule


def _conv_forward(layer, tap, inputs):
    if layer.padding == "causal":
        # Conv1D's own causal path: pad on the left, then a valid convolution.
        x = ops.conv(
            ops.pad(inputs, _compat.causal_padding(layer)),
            layer.kernel,
            strides=list(layer.strides),
            padding="valid",
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
    else:
        x = layer.convolution_op(inputs, layer.kernel)
    return _bias_and_activation(layer, tap(x, inputs))


def _depthwise_conv(layer, inputs, kernel):
    return ops.depthwise_conv(
        inputs,
        kernel,
        strides=layer.strides,
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


def _depthwise_forward(layer, tap, inputs):
    x = _depthwise_conv(layer, inputs, layer.kernel)
    return _bias_and_activation(layer, tap(x, inputs))


def _bias_and_activation(layer, x):
    if layer.bias is not None:
        rank = len(x.shape) - 2
        channels = x.shape[-1 if layer.data_format == "channels_last" else 1]
        shape = (1,) * (rank + 1) + (channels,) if layer.data_format == "channels_last" else (1, channels) + (1,) * rank
        x = ops.add(x, ops.reshape(layer.bias, shape))
    return layer.activation(x) if layer.activation is not None else x


@rule(keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, forward=_conv_forward)
def _conv_squared_norms(layer, inputs, d, method, depthwise=False):
    # A depthwise convolution is one with a group per input channel.
    groups = inputs.shape[-1 if layer.data_format == "channels_last" else 1] if depthwise else layer.groups
    kernel, bias = conv_squared_norms(
        _channels_last(inputs, layer.data_format),
        _channels_last(d, layer.data_format),
        layer.kernel_size,
        layer.strides,
        layer.dilation_rate,
        layer.padding,
        groups,
        method,
    )
    return (kernel, bias) if layer.bias is not None else (kernel,)


@rule(keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D, forward=_depthwise_forward)
def _depthwise_squared_norms(layer, inputs, d, method):
    return _conv_squared_norms(layer, inputs, d, method, depthwise=True)


def _channels_last(x, data_format):
    if data_format != "channels_first":
        return x
    rank = len(x.shape)
    return ops.transpose(x, (0,) + tuple(range(2, rank)) + (1,))


def _separable_forward(layer, tap, inputs):
    # Keras's ops.separable_conv is this depthwise then pointwise pair; the
    # tap keeps the depthwise output for the pointwise kernel's norms.
    depthwise = _depthwise_conv(layer, inputs, layer.depthwise_kernel)
    x = ops.conv(depthwise, layer.pointwise_kernel, strides=1, padding="valid", data_format=layer.data_format)
    return _bias_and_activation(layer, tap(x, (inputs, depthwise)))


@rule(keras.layers.SeparableConv1D, keras.layers.SeparableConv2D, forward=_separable_forward)
def _separable_squared_norms(layer, residuals, d, method):
    inputs, depthwise = (_channels_last(t, layer.data_format) for t in residuals)
    d = _channels_last(d, layer.data_format)
    pointwise, bias = dense_squared_norms(depthwise, d, method)
    # dL/d(depthwise output) through the 1x1 pointwise convolution.
    d_depthwise = ops.matmul(ops.cast(d, "float32"),
                             ops.transpose(ops.cast(ops.reshape(layer.pointwise_kernel, (-1, layer.filters)), "float32")))
    depthwise_kernel, _ = conv_squared_norms(
        inputs, d_depthwise, layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding,
        inputs.shape[-1], method,
    )
    return (depthwise_kernel, pointwise, bias) if layer.bias is not None else (depthwise_kernel, pointwise)


def _transpose_forward(layer, tap, inputs):
    x = ops.conv_transpose(
        inputs,
        layer.kernel,
        strides=list(layer.strides),
        padding=layer.padding,
        output_padding=layer.output_padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )
    return _bias_and_activation(layer, tap(x, inputs))


@rule(keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
      forward=_transpose_forward)
def _transpose_squared_norms(layer, inputs, d, method):
    # y = conv_K^T(x) is the adjoint of the convolution z = conv_K(y) whose
    # kernel (kernel_size + (filters, C_in)) is the layer's: <conv_K^T(x), d>
    # = <x, conv_K(d)>, so dL/dK is that convolution's kernel gradient with
    # input d and output gradient x.
    inputs, d = _channels_last(inputs, layer.data_format), _channels_last(d, layer.data_format)
    kernel, _ = conv_squared_norms(d, inputs, layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding,
                                   1, method)
    if layer.bias is None:
        return (kernel,)
    bias = ops.sum(ops.square(ops.sum(ops.cast(d, "float32"), axis=tuple(range(1, len(d.shape) - 1)))), axis=-1)
    return kernel, bias

