"""Backend-specific glue: XLA compilation of per-variable updates, dense gradients.

Keras turns XLA off for the whole train step under tf.distribute; compiling the
per-variable update on its own still fuses its norms and elementwise math.
Inside a step that is already compiled (fit(jit_compile=True), or any step on
JAX) the nested compiled function is inlined.
"""

import keras


def maybe_jit(fn, enabled):
    """Returns `fn` compiled with XLA on the TensorFlow backend when `enabled`.

    `fn` takes tensors (or None) positionally; the wrapper reads variables
    into tensors first, since tf.function traces tensors, not Keras variables.
    """
    if not enabled or keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    compiled = tf.function(fn, jit_compile=True, autograph=False)

    def call(*args):
        return compiled(*(None if a is None else tf.convert_to_tensor(a) for a in args))

    return call


def dense_gradient(gradient):
    """Densifies a TensorFlow `IndexedSlices` gradient (from `Embedding`),
    summing rows of repeated indices: the trust ratio needs the norm of the
    whole summed gradient, not of its unsummed rows."""
    if keras.backend.backend() != "tensorflow":
        return gradient
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def colocated_with(variable):
    """On TensorFlow, places variables created in this context with
    `variable` (as Keras's optimizer slots: a parameter server keeps them
    together); elsewhere a no-op."""
    import contextlib

    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.distribute.get_strategy().extended.colocate_vars_with(variable.value)
