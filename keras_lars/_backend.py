"""Backend-specific glue: XLA compilation of per-variable updates, dense gradients.

Keras turns XLA off for the whole train step under tf.distribute; compiling the
per-variable update on its own still fuses its norms and elementwise math.
Inside a step that is already compiled (fit(jit_compile=True), or any step on
JAX) the nested compiled function is inlined.
"""

import re

import keras

from keras_lars import _compat


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


def fast_norm(x):
    """||x|| (float32 scalar) of a float32 tensor, computed outside XLA where
    that is faster, else None (the caller computes it inside its update).

    On TensorFlow outside an XLA cluster (graph mode: tf.distribute, where
    Keras turns XLA off, and runs with op determinism), as TensorFlow's
    `reduce_sum(square)`: it reads 7.6-10 GB/s at 1M-64M elements on the CI
    machine against about 5 GB/s for XLA's reduction
    (`benchmarks/optimizer_apply.py`; the norms are the memory traffic LARS
    adds to SGD). A (1 x n) @ (n x 1) GEMV reads faster above 4M elements
    (14-23 GB/s) but its float32 accumulation drifts with n (relative error
    measured 2026-12-01: -1e-5 at 2^20 elements, -6.6e-4 at 2^24, -5e-3 at
    2^26; XLA's dot: -2.2e-4, -1.4e-2, -9.6e-2), against about 1e-8 for
    both reductions at every size. Inside XLA (and on JAX), None.
    """
    if keras.backend.backend() != "tensorflow" or keras.backend.standardize_dtype(x.dtype) != "float32":
        return None
    import tensorflow as tf

    if _in_xla_context():
        return None
    return tf.sqrt(tf.reduce_sum(tf.square(tf.convert_to_tensor(x))))


def _in_xla_context():
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # a TensorFlow without the helper: keep the norms in XLA
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def dense_gradient(gradient):
    """Densifies a sparse gradient (TensorFlow's `IndexedSlices` from
    `Embedding`, a JAX `BCOO`), summing rows of repeated indices: the trust
    ratio needs the norm of the whole summed gradient, not of its unsummed
    rows."""
    if keras.backend.backend() == "jax":
        from jax.experimental import sparse

        return gradient.todense() if isinstance(gradient, sparse.JAXSparse) else gradient
    if keras.backend.backend() != "tensorflow":
        return gradient
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def variable_path(variable):
    """`variable.path` ("dense/kernel"); for a raw `tf.Variable` in a Keras
    model, which has no path, its name without the ":0" suffix."""
    path = getattr(variable, "path", None)
    return path if path is not None else re.sub(r":\d+$", "", variable.name)


def colocated_with(variable):
    """On TensorFlow, places variables created in this context with
    `variable` (as Keras's optimizer slots: a parameter server keeps them
    together); elsewhere a no-op."""
    import contextlib

    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    value = variable.value if isinstance(variable, keras.Variable) else variable  # a raw tf.Variable is its own value
    return tf.distribute.get_strategy().extended.colocate_vars_with(value)


def tap_identity(z, probe, residuals, emit):
    """`z`, unchanged, on the way forward; on the way back, dL/dz passes
    through unchanged and the cotangent of `probe` (a float32 tensor that
    the forward pass does not use) is `emit(residuals, dL/dz)`, a float32
    tensor of `probe`'s shape. `residuals` (a tensor or a tuple of tensors
    from the forward pass) get no gradient from the tap.

    On TensorFlow a `tf.custom_gradient`; on JAX a `jax.custom_vjp` (its
    residuals are explicit inputs: JAX's rules may not close over tracers).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.custom_gradient
        def identity(t, p):
            def grad(upstream):
                return upstream, tf.cast(emit(residuals, upstream), p.dtype)

            return tf.identity(t), grad

        return identity(z, tf.convert_to_tensor(probe))
    if backend == "jax":
        return _jax_tap(emit)(z, probe, residuals)
    raise RuntimeError(
        f"Per-example gradient norms support the TensorFlow and JAX backends; the Keras backend "
        f"is {backend!r}."
    )


def _jax_tap(emit):
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def identity(t, p, residuals):
        return t

    def forward(t, p, residuals):
        return t, residuals

    def backward(residuals, upstream):
        # Probes are float32; the residuals get a zero cotangent.
        return upstream, jnp.asarray(emit(residuals, upstream), "float32"), jax.tree.map(jnp.zeros_like, residuals)

    identity.defvjp(forward, backward)
    return identity


def num_replicas_in_sync():
    """Replicas the current `tf.distribute` strategy splits each batch over
    (1 outside one, and on JAX, where a model sees the global batch)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def all_reduce_sum(value):
    """Sum over the replicas of the current `tf.distribute` replica context;
    the identity outside one and on JAX (whose SPMD partitioner already sums
    a cotangent over the batch's shards)."""
    if keras.backend.backend() != "tensorflow":
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def variable_scope_of(model):
    """The context under which `model`'s variables were created (its
    `tf.distribute` strategy's scope on TensorFlow), for creating more."""
    import contextlib

    strategy = _compat.distribute_strategy(model)
    if keras.backend.backend() != "tensorflow" or strategy is None:
        return contextlib.nullcontext()
    return strategy.scope()


def value_and_gradients(model, loss_fn, variables, extra_shapes):
    """`loss_fn(extras)` and its gradients with respect to `variables` (trainable
    variables of `model`) and to `extras`, float32 zero tensors of
    `extra_shapes` that `loss_fn` receives (the taps' probes). A
    `tf.GradientTape` on TensorFlow; on JAX, `jax.value_and_grad` of the
    model's stateless call.

    Returns:
        `(value, variable_gradients, extra_gradients)`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        extras = [tf.zeros(shape, "float32") for shape in extra_shapes]
        with tf.GradientTape() as tape:
            tape.watch(extras)
            value = loss_fn(extras)
        grads = tape.gradient(value, list(variables) + extras)
        return value, grads[: len(variables)], grads[len(variables):]
    import jax
    import jax.numpy as jnp

    trainable = model.trainable_variables
    positions = {id(v): i for i, v in enumerate(trainable)}
    missing = [variable_path(v) for v in variables if id(v) not in positions]
    if missing:
        raise ValueError(f"Variables {missing} are not trainable variables of model {model.name!r}.")

    def loss_of(values, extras):
        with keras.StatelessScope(state_mapping=list(zip(trainable, values))):
            return loss_fn(extras)

    extras = [jnp.zeros(shape, "float32") for shape in extra_shapes]
    value, (grads, extra_grads) = jax.value_and_grad(loss_of, argnums=(0, 1))([v.value for v in trainable], extras)
    return value, [grads[positions[id(v)]] for v in variables], extra_grads


def vectorized_squared_norms(call, variables, values, inputs, dy):
    """Per-example squared norms of the gradients of `call`'s output (with
    output gradient `dy`) with respect to each of `variables`: a vectorized
    map of one small backward pass per example. `values` are the variables'
    values read in the forward pass (JAX differentiates with respect to
    them). Returns a tuple of float32 (B,) tensors, one per variable."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        def one_example(example):
            x_i, dy_i = example
            with tf.GradientTape() as tape:
                y_i = call(x_i[None])
            grads = tape.gradient(y_i, variables, output_gradients=dy_i[None])
            return tf.stack([tf.reduce_sum(tf.square(tf.cast(g, "float32"))) for g in grads])

        squared = tf.vectorized_map(one_example, (inputs, dy))
    else:
        import jax
        import jax.numpy as jnp

        def one_example(x_i, dy_i):
            def output(vals):
                with keras.StatelessScope(state_mapping=list(zip(variables, vals))):
                    return call(x_i[None])

            _, vjp = jax.vjp(output, list(values))
            grads = vjp(dy_i[None].astype(output(list(values)).dtype))[0]
            return jnp.stack([jnp.sum(jnp.square(g.astype("float32"))) for g in grads])

        squared = jax.vmap(one_example)(inputs, dy)
    return tuple(squared[:, j] for j in range(len(variables)))
