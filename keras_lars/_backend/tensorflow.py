"""TensorFlow: XLA compilation of per-variable updates, `tf.distribute`, and
the tap as a `tf.custom_gradient`.

Keras turns XLA off for the whole train step under tf.distribute; compiling the
per-variable update on its own still fuses its norms and elementwise math.
Inside a step that is already compiled (fit(jit_compile=True)) the nested
compiled function is inlined.
"""

import keras
import tensorflow as tf

from keras_lars import _compat

PER_EXAMPLE_NORMS = True
# A strided window copied straight from the input is a slow gather here.
SPLIT_STRIDED_WINDOWS = True


def maybe_jit(fn, enabled):
    """Returns `fn` compiled with XLA when `enabled`.

    `fn` takes tensors (or None) positionally; the wrapper reads variables
    into tensors first, since tf.function traces tensors, not Keras variables.
    """
    if not enabled:
        return fn
    compiled = tf.function(fn, jit_compile=True, autograph=False)

    def call(*args):
        return compiled(*(None if a is None else tf.convert_to_tensor(a) for a in args))

    return call


def fast_norm(x):
    """||x|| (float32 scalar) of a float32 tensor, computed outside XLA where
    that is faster, else None (the caller computes it inside its update).

    Outside an XLA cluster (graph mode: tf.distribute, where Keras turns XLA
    off, and runs with op determinism), as TensorFlow's `reduce_sum(square)`:
    it reads faster than XLA's reduction on CPU (the norms are the memory
    traffic LARS adds to SGD), and its error stays at float32 rounding at
    every size, where a (1 x n) @ (n x 1) GEMV, faster still at large n,
    accumulates an error that grows with n (docs/measurements.md,
    `benchmarks/optimizer_apply.py`). Inside XLA, None.
    """
    if keras.backend.standardize_dtype(x.dtype) != "float32" or _in_xla_context():
        return None
    return tf.sqrt(tf.reduce_sum(tf.square(tf.convert_to_tensor(x))))


def _in_xla_context():
    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # a TensorFlow without the helper: keep the norms in XLA
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def dense_gradient(gradient):
    """Densifies an `IndexedSlices` gradient (from `Embedding`), summing rows
    of repeated indices: the trust ratio needs the norm of the whole summed
    gradient, not of its unsummed rows."""
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


def colocated_with(variable):
    """Places variables created in this context with `variable` (as Keras's
    optimizer slots: a parameter server keeps them together)."""
    value = variable.value if isinstance(variable, keras.Variable) else variable  # a raw tf.Variable is its own value
    return tf.distribute.get_strategy().extended.colocate_vars_with(value)


def tap_identity(z, probe, residuals, emit):
    """`z`, unchanged, on the way forward; on the way back, dL/dz passes
    through unchanged and the cotangent of `probe` (a float32 tensor that
    the forward pass does not use) is `emit(residuals, dL/dz)`, a float32
    tensor of `probe`'s shape. `residuals` (a tensor or a tuple of tensors
    from the forward pass) get no gradient from the tap."""

    @tf.custom_gradient
    def identity(t, p):
        def grad(upstream):
            return upstream, tf.cast(emit(residuals, upstream), p.dtype)

        return tf.identity(t), grad

    return identity(z, tf.convert_to_tensor(probe))


def num_replicas_in_sync():
    """Replicas the current `tf.distribute` strategy splits each batch over
    (1 outside one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_reduce_sum(value):
    """Sum over the replicas of the current `tf.distribute` replica context;
    the identity outside one."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def variable_scope_of(model):
    """The scope of the `tf.distribute` strategy `model`'s variables were
    created under, for creating more."""
    import contextlib

    strategy = _compat.distribute_strategy(model)
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def after(tensor):
    """Runs what follows after `tensor`: one kernel offset's window copy at a
    time instead of all at once (peak memory)."""
    import contextlib

    return contextlib.nullcontext() if tensor is None else tf.control_dependencies([tensor])


def value_and_gradients(model, loss_fn, variables, extra_shapes):
    """`loss_fn(extras)` and its gradients with respect to `variables` (trainable
    variables of `model`) and to `extras`, float32 zero tensors of
    `extra_shapes` that `loss_fn` receives (the taps' probes), by a
    `tf.GradientTape`. A variable or extra the loss does not reach gets zeros.

    Returns:
        `(value, variable_gradients, extra_gradients)`.
    """
    extras = [tf.zeros(shape, "float32") for shape in extra_shapes]
    with tf.GradientTape() as tape:
        tape.watch(extras)
        value = loss_fn(extras)
    # The tf.Variables: zeros for an unconnected one take its dtype, which a
    # Keras variable gives as a string.
    targets = [_tf_variable(v) for v in variables] + extras
    grads = tape.gradient(value, targets, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, grads[: len(variables)], grads[len(variables):]


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def vectorized_gradients(call, variables, values, inputs, dy, constants=()):
    """Per-example gradients of `call(inputs)` (with output gradient `dy`)
    with respect to `variables`, flattened and side by side: a float32
    (B, sum of the variables' sizes) tensor, by a vectorized map of one small
    backward pass per example. A variable the output does not depend on gets
    zeros. `values` and `constants` ((variable, value) pairs of the call's
    other variables) serve JAX; here the call reads the variables."""

    def one_example(example):
        x_i, dy_i = example
        with tf.GradientTape() as tape:
            y_i = call(keras.tree.map_structure(lambda t: t[None], x_i))
        grads = tape.gradient(y_i, [_tf_variable(v) for v in variables], output_gradients=dy_i[None],
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.concat([tf.reshape(tf.cast(tf.convert_to_tensor(g), "float32"), [-1]) for g in grads], 0)

    return tf.vectorized_map(one_example, (inputs, dy))


def tap_first(z, probe, residuals, emit, width):
    """The first call's tap of a layer called more than once per step:
    returns `(z, mailbox)`, the mailbox a float32 (B, width) zero tensor
    that the later calls' taps take (`tap_later`). On the way back, their
    contributions arrive summed as the mailbox's cotangent (zeros if none),
    and the probe's cotangent is `emit(residuals, dL/dz, mailbox cotangent)`."""

    @tf.custom_gradient
    def first(t, p):
        def grad(upstream, mail):
            mail = tf.zeros([tf.shape(t)[0], width], "float32") if mail is None else mail
            return upstream, tf.cast(emit(residuals, upstream, mail), p.dtype)

        return (tf.identity(t), tf.zeros([tf.shape(t)[0], width], "float32")), grad

    return first(z, tf.convert_to_tensor(probe))


def tap_later(z, mailbox, residuals, send):
    """A later call's tap (see `tap_first`): `z` unchanged; on the way back,
    the mailbox's cotangent is `send(residuals, dL/dz)`, (B, width) float32."""

    @tf.custom_gradient
    def later(t, m):
        def grad(upstream):
            return upstream, tf.cast(send(residuals, upstream), "float32")

        return tf.identity(t), grad

    return later(z, mailbox)
