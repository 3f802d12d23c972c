"""Per-example gradient norms against brute force: each example alone through
its own autodiff pass (tf.GradientTape or jax.grad), one example at a time.
Runs on TensorFlow and JAX."""

import keras
import numpy as np
import pytest

import keras_lars
from backends import per_example_gradients, tensorflow_only
from keras_lars.per_example.kernels import choose_method, conv_squared_norms

L = keras.layers
B = 6


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def brute_force_mean_norms(model, x, y, variables, training=True, count=None):
    """(1/B) sum_i ||grad f_i||, with f_i example i's loss computed alone."""
    count = count or len(x)
    grads = per_example_gradients(model, _loss(), x[:count], y[:count], variables, training)
    return np.mean([[np.linalg.norm(g) for g in example] for example in grads], axis=0)


def _model(input_shape, *layers):
    keras.utils.set_random_seed(3)
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    x = L.Flatten()(x) if len(x.shape) > 2 else x
    return keras.Model(inputs, L.Dense(4, name="head")(x))


# Every supported layer type with its options; "head" (Dense on flat input) is in all.
CASES = {
    "dense_flat": ((7,), lambda: [L.Dense(5, activation="tanh")]),
    "dense_sequence": ((5, 3), lambda: [L.Dense(6, activation="relu")]),
    "conv1d_causal_dilated": ((10, 3), lambda: [L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="tanh")]),
    "conv1d_strided_same": ((11, 3), lambda: [L.Conv1D(4, 4, strides=3, padding="same")]),
    "conv2d_strided_same_groups": ((9, 9, 4), lambda: [L.Conv2D(6, 3, strides=2, padding="same", groups=2, activation="relu")]),
    "conv2d_dilated_valid": ((9, 8, 3), lambda: [L.Conv2D(4, (3, 2), dilation_rate=(2, 1))]),
    "conv2d_channels_first": ((3, 10, 12), lambda: [L.Conv2D(4, 3, strides=2, padding="same", data_format="channels_first")]),
    "conv3d": ((5, 5, 5, 2), lambda: [L.Conv3D(3, 2, strides=2, padding="same", activation="relu")]),
    "depthwise2d": ((7, 7, 3), lambda: [L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", activation="tanh")]),
    "depthwise1d": ((9, 3), lambda: [L.DepthwiseConv1D(3, dilation_rate=2, depth_multiplier=2)]),
    "no_bias_stack": ((8, 8, 3), lambda: [L.Conv2D(4, 3, use_bias=False, activation="relu"), L.Conv2D(4, 1, strides=2)]),
    "separable2d": ((8, 8, 3), lambda: [L.SeparableConv2D(5, 3, strides=2, padding="same", depth_multiplier=2,
                                                          activation="relu")]),
    "separable2d_channels_first": ((3, 7, 8), lambda: [L.SeparableConv2D(4, (2, 3), dilation_rate=(2, 1),
                                                                         data_format="channels_first")]),
    "separable1d": ((10, 3), lambda: [L.SeparableConv1D(4, 3, strides=2, padding="same", use_bias=False)]),
    "conv2d_transpose_same": ((5, 4, 3), lambda: [L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="tanh")]),
    "conv2d_transpose_valid_output_padding": ((4, 5, 2), lambda: [L.Conv2DTranspose(3, (3, 2), strides=(2, 3),
                                                                                   output_padding=(1, 2))]),
    "conv1d_transpose_dilated": ((6, 3), lambda: [L.Conv1DTranspose(4, 3, dilation_rate=2, padding="same")]),
    "conv3d_transpose": ((3, 3, 2, 2), lambda: [L.Conv3DTranspose(2, 2, strides=2, use_bias=False)]),
    "einsum_dense_sequence": ((5, 6), lambda: [L.EinsumDense("abc,cde->abde", output_shape=(5, 2, 3),
                                                             bias_axes="de", activation="relu")]),
    "einsum_dense_bias_one_axis": ((5, 6), lambda: [L.EinsumDense("abc,cd->abd", output_shape=(5, 4), bias_axes="b")]),
    "einsum_dense_per_head": ((4, 2, 3), lambda: [L.EinsumDense("abhc,hcd->abhd", output_shape=(4, 2, 5),
                                                                bias_axes="hd")]),
}


@pytest.mark.parametrize("method", ["auto", "ghost", "materialize"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_norms_match_brute_force(case, method):
    shape, layers = CASES[case]
    model = _model(shape, *layers())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B,) + shape).astype("float32")
    y = rng.integers(0, 4, size=B)
    variables = model.trainable_variables  # kernels and biases alike
    norms, grads, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables, method=method)
    expected = brute_force_mean_norms(model, x, y, variables)
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5)
    # Triangle inequality: the mean of norms bounds the norm of the mean.
    for n, g in zip(norms, grads):
        assert float(n) >= np.linalg.norm(keras.ops.convert_to_numpy(g)) * (1 - 1e-6)


def _compiled(fn):
    """`fn` traced and compiled by the backend: jax.jit or tf.function (on
    PyTorch, `fn` itself: Keras's torch backend runs eagerly)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    if keras.backend.backend() == "torch":
        return fn
    import tensorflow as tf

    return tf.function(fn)


def test_norms_inside_a_compiled_function_match_eager():
    shape, layers = CASES["conv2d_strided_same_groups"]
    model = _model(shape, *layers())
    x = np.random.default_rng(1).normal(size=(B,) + shape).astype("float32")
    y = np.arange(B) % 4
    eager, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss())
    compiled = _compiled(lambda x: keras_lars.per_example_gradient_norms(model, x, y, _loss())[0])(x)
    np.testing.assert_allclose([float(n) for n in compiled], [float(n) for n in eager], rtol=1e-5)


def test_batchnorm_in_inference_mode_matches_brute_force():
    model = _model((8, 8, 3), L.Conv2D(4, 3, use_bias=False), L.BatchNormalization(), L.ReLU())
    bn = model.layers[2]
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 4))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4))
    x = np.random.default_rng(2).normal(size=(B, 8, 8, 3)).astype("float32")
    y = np.arange(B) % 4
    variables = [v for v in model.trainable_variables if len(v.shape) >= 2]
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables, training=False)
    expected = brute_force_mean_norms(model, x, y, variables, training=False)
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5)


@tensorflow_only
def test_batchnorm_in_training_mode_gives_per_example_contributions():
    import tensorflow as tf

    # Examples are coupled through the batch statistics: the norms are those of
    # a_i (x) d_i with d from the batch loss, checked here by a per-example
    # jacobian of the batch loss's kernel gradient contributions.
    model = _model((6, 6, 2), L.Conv2D(3, 3, use_bias=False, name="conv"), L.BatchNormalization(), L.ReLU())
    x = np.random.default_rng(3).normal(size=(B, 6, 6, 2)).astype("float32")
    y = np.arange(B) % 4
    conv = model.get_layer("conv")
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), [conv.kernel], training=True)
    # Reference: the kernel is applied to each example through its own copy,
    # so d(batch loss)/d(copy_i) is example i's contribution.
    copies = tf.Variable(tf.repeat(conv.kernel.value[None], B, axis=0))
    conv.call = lambda inputs: tf.vectorized_map(
        lambda pair: tf.nn.conv2d(pair[0][None], pair[1], 1, "VALID")[0], (inputs, copies)
    )
    try:
        with tf.GradientTape() as tape:
            loss = _loss()(y, model(x, training=True))
        per_example = tape.gradient(loss, copies).numpy()
    finally:
        del conv.__dict__["call"]  # back to Conv2D.call
    expected = np.linalg.norm(per_example.reshape(B, -1), axis=1).sum()
    np.testing.assert_allclose(float(norms[0]), expected, rtol=1e-5)


def _case_batch(case, seed, size=8):
    """A model of CASES[case], `size` random examples and labels, its variables."""
    shape, layers = CASES[case]
    model = _model(shape, *layers())
    x = np.random.default_rng(seed).normal(size=(size,) + shape).astype("float32")
    return model, x, np.arange(size) % 4, model.trainable_variables


def test_sub_batch_estimate_uses_the_first_examples():
    model, x, y, variables = _case_batch("conv2d_dilated_valid", 4)
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables, sub_batch_size=3)
    # (B / |J|) * sum_{j<3} ||grad f_j|| / B = the mean over the first 3 examples.
    expected = brute_force_mean_norms(model, x, y, variables, count=3)
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5)


def test_unsupported_layer_is_named_unless_vectorized_fallback():
    model = _model((5, 3), L.Dense(6), L.LayerNormalization(name="ln"))
    x = np.random.default_rng(5).normal(size=(B, 5, 3)).astype("float32")
    y = np.arange(B) % 4
    variables = model.trainable_variables
    with pytest.raises(ValueError, match=r"2 variable\(s\) in 1 LayerNormalization layer\(s\), e.g. 'ln/gamma' of layer 'ln'"):
        keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables)
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables, unsupported_layers="vectorized")
    np.testing.assert_allclose([float(n) for n in norms], brute_force_mean_norms(model, x, y, variables), rtol=1e-5)


class Patcher(L.Layer):
    """A ViT-style patcher: a Conv2D sub-layer, then a class token of its own
    prepended, and an unused variable (no gradient, as a pooler a head
    ignores)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(4, 2, strides=2)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.class_token = self.add_weight(shape=(1, 1, 4), initializer="random_normal", name="class_token")
        self.unused = self.add_weight(shape=(3, 4), initializer="random_normal", name="unused")

    def call(self, x):
        patches = keras.ops.reshape(self.conv(x), (-1, 4, 4))
        token = keras.ops.tile(self.class_token, (keras.ops.shape(x)[0], 1, 1))
        return keras.ops.concatenate([token, patches], axis=1)


def test_vectorized_fallback_takes_a_layer_with_sub_layers_and_unused_variables():
    model = _model((4, 4, 2), Patcher(name="patcher"))
    x = np.random.default_rng(6).normal(size=(B, 4, 4, 2)).astype("float32")
    y = np.arange(B) % 4
    patcher = model.get_layer("patcher")
    variables = [patcher.conv.kernel, patcher.conv.bias, patcher.class_token, patcher.unused,
                 model.get_layer("head").kernel]
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables, unsupported_layers="vectorized")
    expected = brute_force_mean_norms(model, x, y, variables)
    assert expected[3] == 0.0 and expected[2] > 0
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5)
    squared, _, _ = keras_lars.per_example_squared_norms(model, x, y, _loss(), variables,
                                                         unsupported_layers="vectorized")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(squared[3]), np.zeros(B))


class BroadcastPositions(L.Layer):
    """Adds a position table looked up by an Embedding sub-layer with
    position ids of batch 1 (as KerasHub's CLIP embedding does): the
    sub-layer's own tap would see the sum over the batch."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.table = L.Embedding(4, 3, name="table")

    def build(self, input_shape):
        self.table.build((1, 4))

    def call(self, x):
        return x + self.table(keras.ops.expand_dims(keras.ops.arange(4), 0))


def test_a_layer_called_on_a_batch_of_one_inside_a_step_is_refused():
    model = _model((4, 3), BroadcastPositions(name="positions"))
    x = np.random.default_rng(7).normal(size=(B, 4, 3)).astype("float32")
    table = model.get_layer("positions").table
    with pytest.raises(ValueError, match=r"Layer 'table' \(Embedding\) is called on a batch of 1 in a step on a batch of 6"):
        keras_lars.per_example_gradient_norms(model, x, np.arange(B) % 4, _loss(), [table.embeddings])


def test_subclass_overriding_call_is_not_tapped():
    class ScaledDense(L.Dense):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    model = _model((4,), ScaledDense(3, name="scaled"))
    with pytest.raises(ValueError, match=r"in 1 ScaledDense layer\(s\), e.g. 'scaled/kernel' of layer 'scaled'"):
        keras_lars.attach_per_example_norms(model, model.trainable_variables)


def test_a_layer_called_twice_gets_exact_norms():
    keras.utils.set_random_seed(0)
    shared = L.Dense(4, activation="tanh", name="shared")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, shared(shared(inputs)))
    x = np.random.default_rng(8).normal(size=(B, 4)).astype("float32")
    y = np.arange(B) % 4
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), [shared.kernel, shared.bias])
    expected = brute_force_mean_norms(model, x, y, [shared.kernel, shared.bias])
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5)
    # The per-call norms summed (what a tap per call would give) differ.
    first = keras.Model(inputs, shared(inputs))
    assert not np.allclose(expected[0], brute_force_mean_norms(first, x, np.arange(B) % 4, [shared.kernel])[0])


@pytest.mark.parametrize("tie_weights", [True, False])
def test_causal_lm_head_with_reversible_embedding_matches_brute_force(tie_weights):
    """A causal LM's token embedding, looked up on the way in and used
    reversed as the output head (tied: one table, two calls)."""
    keras.utils.set_random_seed(4)
    vocabulary, length = 11, 5
    embedding = L.ReversibleEmbedding(vocabulary, 6, tie_weights=tie_weights, name="tokens")
    ids = keras.Input((length,), dtype="int32")
    hidden = L.Dense(6, activation="tanh", name="block")(embedding(ids))
    model = keras.Model(ids, embedding(hidden, reverse=True))
    x = np.random.default_rng(9).integers(0, 4, size=(B, length)).astype("int32")  # repeated ids
    y = np.roll(x, -1, axis=1)
    variables = [v for v in model.trainable_variables if len(v.shape) >= 2]
    assert len(variables) == (2 if tie_weights else 3)
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables)
    expected = brute_force_mean_norms(model, x, y, variables)
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5)
    model.compile(optimizer=keras_lars.CLARS(learning_rate=0.1), loss=_loss())
    keras_lars.attach_per_example_norms(model)
    assert np.isfinite(model.fit(x, y, batch_size=B, epochs=1, verbose=0).history["loss"][0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "fast"}, "`method` must be one of"),
        ({"sub_batch_size": 0}, "`sub_batch_size` must be None or an int >= 1"),
        ({"unsupported_layers": "skip"}, "`unsupported_layers` must be one of"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    model = _model((4,))
    with pytest.raises(ValueError, match=message):
        keras_lars.attach_per_example_norms(model, model.trainable_variables, **kwargs)


def test_unbuilt_model_and_missing_optimizer_are_errors():
    with pytest.raises(ValueError, match="is not built"):
        keras_lars.attach_per_example_norms(keras.Sequential([L.Dense(2)]))
    model = _model((4,))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="optimizer is not CLARS"):
        keras_lars.attach_per_example_norms(model)


def test_detach_restores_the_layers():
    model = _model((4,), L.Dense(3))
    before = type(model.layers[1]).call
    handle = keras_lars.attach_per_example_norms(model, model.trainable_variables)
    assert "call" in model.layers[1].__dict__
    handle.detach()
    assert "call" not in model.layers[1].__dict__ and type(model.layers[1]).call is before


def test_method_choice_follows_the_cost_model():
    # Late ResNet layer (7x7 output, 3x3 kernel, 512 channels): ghost is cheaper.
    assert choose_method("auto", 49, 9, 512, 512) == "ghost"
    # Early layer (28x28 output, 16 channels): materializing is cheaper.
    assert choose_method("auto", 784, 9, 16, 16) == "materialize"
    assert choose_method("ghost", 784, 9, 16, 16) == "ghost"


def _numpy_conv_squared_norms(a, d, kernel_size, strides, dilation, pads, groups):
    """||G_i||^2 and ||sum_t d_i,t||^2 by the definition, one example, offset
    and output position at a time (float64)."""
    a = np.pad(a.astype(np.float64), [(0, 0)] + list(pads) + [(0, 0)])
    d = d.astype(np.float64)
    c_in, c_out = a.shape[-1] // groups, d.shape[-1] // groups
    kernel = np.zeros((len(a),) + tuple(kernel_size) + (c_in, d.shape[-1]))
    for offset in np.ndindex(*kernel_size):
        for position in np.ndindex(*d.shape[1:-1]):
            index = tuple(p * s + o * r for p, s, o, r in zip(position, strides, offset, dilation))
            for g in range(groups):
                patch = a[(slice(None),) + index + (slice(g * c_in, (g + 1) * c_in),)]
                grad = d[(slice(None),) + position + (slice(g * c_out, (g + 1) * c_out),)]
                kernel[(slice(None),) + offset + (slice(None), slice(g * c_out, (g + 1) * c_out))] += (
                    patch[:, :, None] * grad[:, None, :])
    return np.sum(kernel.reshape(len(a), -1) ** 2, axis=1), np.sum(d.sum(axis=(1, 2)) ** 2, axis=1)


# (input size, kernel, strides, dilation, padding, groups): strides above 1
# take a window from one of the input's phases (`per_example.kernels._Windows`),
# with dilations and strides that Keras's layers never combine.
CONV_GEOMETRIES = [
    ((9, 8), (3, 3), (2, 2), (1, 1), "same", 1),
    ((11, 10), (3, 2), (3, 2), (2, 1), "valid", 1),
    ((10, 9), (4, 3), (2, 3), (3, 2), "same", 2),
    ((7, 7), (1, 1), (2, 2), (1, 1), "valid", 1),
    ((8, 9), (2, 2), (2, 4), (1, 1), "same", 1),
]


@pytest.mark.parametrize("method", ["ghost", "materialize"])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=str)
def test_conv_squared_norms_match_the_definition(geometry, method):
    size, kernel_size, strides, dilation, padding, groups = geometry
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3,) + size + (4,)).astype("float32")
    reach = [(k - 1) * r + 1 for k, r in zip(kernel_size, dilation)]
    if padding == "same":
        out = [-(-n // s) for n, s in zip(size, strides)]
        total = [max((o - 1) * s + k - n, 0) for o, s, k, n in zip(out, strides, reach, size)]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        out = [(n - k) // s + 1 for n, k, s in zip(size, reach, strides)]
        pads = [(0, 0)] * 2
    d = rng.normal(size=(3,) + tuple(out) + (6,)).astype("float32")
    kernel, bias = conv_squared_norms(keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(d), kernel_size,
                                      strides, dilation, padding, groups, method)
    expected_kernel, expected_bias = _numpy_conv_squared_norms(a, d, kernel_size, strides, dilation, pads, groups)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), expected_kernel, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), expected_bias, rtol=1e-5)


class _Scale(L.Layer):
    """y = x * scale with a (C,) scale: a layer the taps do not know."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=input_shape[-1:], initializer="random_normal", name="scale")

    def call(self, x):
        return x * self.scale


def _scale_forward(layer, tap, x):
    return tap(x * layer.scale, x)


def _scale_squared_norms(layer, x, d, method):
    axes = tuple(range(1, len(x.shape) - 1))
    per_example = keras.ops.sum(keras.ops.cast(x, "float32") * keras.ops.cast(d, "float32"), axis=axes)
    return (keras.ops.sum(keras.ops.square(per_example), axis=-1),)


def test_user_registered_layer_matches_brute_force():
    model = _model((5, 3), _Scale(name="scale"), L.Dense(6, activation="tanh"))
    x = np.random.default_rng(6).normal(size=(B, 5, 3)).astype("float32")
    y = np.arange(B) % 4
    variables = model.trainable_variables
    assert "_Scale" not in keras_lars.supported_layers()
    with pytest.raises(ValueError, match=r"(?s)in 1 _Scale layer\(s\), e.g. 'scale/scale' of layer 'scale'.*register_layer"):
        keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables)
    keras_lars.register_layer(_Scale, _scale_forward, _scale_squared_norms)
    try:
        assert "_Scale" in keras_lars.supported_layers()
        norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables)
    finally:
        del keras_lars.per_example.LAYER_RULES[_Scale]
    np.testing.assert_allclose([float(n) for n in norms], brute_force_mean_norms(model, x, y, variables), rtol=1e-5)


def test_register_layer_rejects_bad_arguments():
    with pytest.raises(TypeError, match="subclass of keras.layers.Layer"):
        keras_lars.register_layer(int, _scale_forward, _scale_squared_norms)
    with pytest.raises(TypeError, match="`squared_norms` must be callable"):
        keras_lars.register_layer(_Scale, _scale_forward, None)


def test_squared_norms_match_brute_force_with_a_sub_batch():
    model, x, y, variables = _case_batch("conv2d_strided_same_groups", 7)
    squared, _, _ = keras_lars.per_example_squared_norms(model, x, y, _loss(), variables, sub_batch_size=5)
    expected = [[np.sum(g * g) for g in example] for example in per_example_gradients(model, _loss(), x[:5], y[:5], variables)]
    np.testing.assert_allclose(np.stack([keras.ops.convert_to_numpy(s) for s in squared], 1), expected, rtol=1e-4)


@pytest.mark.parametrize("batch, sub_batch_size", [(3, None), (7, 3), (5, None)])
def test_squared_norms_of_exactly_three_examples_are_not_the_sums(batch, sub_batch_size):
    """Three examples (or a sub-batch of three) once read as the three sums
    [sum ||c_i||, sum ||c_i||^2, n]: VGG16 gave [3.10, 0.357, 27.] for
    [0.113, 0.135, 0.110]."""
    model, x, y, variables = _case_batch("dense_flat", 11, size=batch)
    squared, _, _ = keras_lars.per_example_squared_norms(model, x, y, _loss(), variables, sub_batch_size=sub_batch_size)
    count = sub_batch_size or batch
    expected = [[np.sum(g * g) for g in example]
                for example in per_example_gradients(model, _loss(), x[:count], y[:count], variables)]
    np.testing.assert_allclose(np.stack([keras.ops.convert_to_numpy(s) for s in squared], 1), expected, rtol=1e-4)


def test_embedding_norms_match_brute_force_with_repeated_ids():
    """Repeated ids in one example add into one row: the per-example norm
    is of the summed rows, not the sum of their norms."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(7, 5, name="embedding")(inputs)
    model = keras.Model(inputs, L.Dense(4, name="head")(L.Flatten()(x)))
    ids = np.array([[1, 1, 2, 3, 1, 0], [4, 5, 6, 4, 4, 4], [0, 0, 0, 0, 0, 0], [2, 3, 4, 5, 6, 1]], "int32")
    y = np.arange(4) % 4
    variables = model.trainable_variables
    norms, _, _ = keras_lars.per_example_gradient_norms(model, ids, y, _loss(), variables)
    np.testing.assert_allclose([float(n) for n in norms], brute_force_mean_norms(model, ids, y, variables), rtol=1e-5)


def test_einsum_dense_with_an_ellipsis_is_refused_at_attach_time():
    model = _model((5, 6), L.EinsumDense("...c,cd->...d", output_shape=4, name="e"))
    with pytest.raises(ValueError, match=r"EinsumDense 'e' need an equation .* got '...c,cd->...d'"):
        keras_lars.attach_per_example_norms(model, model.trainable_variables)
