"""Precise BatchNorm statistics (Wu & Johnson, "Rethinking 'Batch' in
BatchNorm", 2021, Sec. 3): before an evaluation, replace each BatchNorm
layer's moving mean and variance by the population statistics of its input
over a fixed set of training examples, computed with the network in training
mode (every earlier BatchNorm normalizing by its batch's statistics, as in
training).

With few optimizer steps (30-60 at B = 16K-8K in 10 epochs of 50,000
images) an exponential moving average still holds much of its initial value
(0 and 1) at evaluation: at momentum m after s steps, a fraction m**s.
Precise statistics have no such lag. They change only what is evaluated: `precise_statistics` restores the
moving statistics afterwards, so training continues bit for bit as without it.
"""

import contextlib

import keras
import numpy as np

CHUNK = 1000  # examples per training-mode forward pass (the statistics are exact over all of them)


def batch_norm_layers(model):
    """The BatchNormalization layers of a functional model (top level)."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def population_statistics(model, images, chunk=CHUNK):
    """[(mean, variance)] per BatchNorm layer of `model`, float64 NumPy arrays
    of shape (channels,): the mean and the biased variance of the layer's
    input over every position of `images` ((N, ...) float32; N a multiple
    of `chunk`), the model run in training mode in chunks of `chunk`.

    Raises:
        ValueError: `len(images)` not a positive multiple of `chunk`.
    """
    if len(images) == 0 or len(images) % chunk:
        raise ValueError(f"len(images) must be a positive multiple of {chunk}. Received: {len(images)}")
    twin = _twin(model)
    layers = batch_norm_layers(twin)
    probe = keras.Model(twin.input, [layer.input for layer in layers])
    sums = [None] * len(layers)
    for start in range(0, len(images), chunk):
        outputs = probe(images[start:start + chunk], training=True)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, value in enumerate(outputs):
            value = keras.ops.convert_to_numpy(value).astype(np.float64)
            value = value.reshape(-1, value.shape[-1])
            moments = np.stack([value.mean(axis=0), (value**2).mean(axis=0)])
            sums[i] = moments if sums[i] is None else sums[i] + moments
    chunks = len(images) // chunk
    return [(s[0] / chunks, s[1] / chunks - (s[0] / chunks) ** 2) for s in sums]


def _twin(model):
    """A copy of `model` with its weights: run in training mode, it leaves the
    model's own moving statistics alone, and it has nothing a library
    attached to the model's layers (CLARS's per-example taps)."""
    twin = keras.Model.from_config(model.get_config())  # the architecture only (clone_model also clones compile())
    for copy, layer in zip(twin.layers, model.layers, strict=True):
        own = {v.name: v for v in layer.weights}  # CLARS adds probe variables to the last layer
        for variable in copy.weights:
            variable.assign(own[variable.name])
    return twin


def _assign(layers, statistics):
    for layer, (mean, variance) in zip(layers, statistics):
        layer.moving_mean.assign(np.asarray(mean, np.float32))
        layer.moving_variance.assign(np.asarray(variance, np.float32))


@contextlib.contextmanager
def precise_statistics(model, images, chunk=CHUNK):
    """Within the block, `model`'s BatchNorm layers hold the population
    statistics of `population_statistics(model, images)`; on exit, their
    moving statistics as before (bit for bit)."""
    layers = batch_norm_layers(model)
    saved = [[v.numpy() for v in (layer.moving_mean, layer.moving_variance)] for layer in layers]
    _assign(layers, population_statistics(model, images, chunk))
    try:
        yield
    finally:
        _assign(layers, saved)
