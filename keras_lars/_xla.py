"""XLA compilation of per-variable update functions.

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
