"""JAX: the tap as a `jax.custom_vjp`, gradients of the model's stateless call."""

import jax
import jax.numpy as jnp
import keras
from jax.experimental import sparse

from keras_lars._backend.common import (  # noqa: F401 (the defaults JAX keeps)
    after,
    all_reduce_sum,
    colocated_with,
    fast_norm,
    maybe_jit,
    num_replicas_in_sync,
    variable_path,
    variable_scope_of,
)

PER_EXAMPLE_NORMS = True
# XLA fuses strided slices into their consumers.
SPLIT_STRIDED_WINDOWS = False


def dense_gradient(gradient):
    """Densifies a `BCOO` gradient, summing rows of repeated indices."""
    return gradient.todense() if isinstance(gradient, sparse.JAXSparse) else gradient


def tap_identity(z, probe, residuals, emit):
    """As `keras_lars._backend.tensorflow.tap_identity`, by a `jax.custom_vjp`
    (its residuals are explicit inputs: JAX's rules may not close over
    tracers). A value computed in a backward pass can only leave it as the
    cotangent of an input: the probe's."""
    return _tap(emit)(z, probe, residuals)


def _tap(emit):
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


def value_and_gradients(model, loss_fn, variables, extra_shapes):
    """As `keras_lars._backend.tensorflow.value_and_gradients`, by
    `jax.value_and_grad` of the model's stateless call."""
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


def vectorized_gradients(call, variables, values, inputs, dy, constants=()):
    """As `keras_lars._backend.tensorflow.vectorized_gradients`, by
    `jax.vmap` of one `jax.vjp` per example. `values` are the variables'
    values read in the forward pass (JAX differentiates with respect to
    them); `constants`, (variable, value) pairs of the call's other
    variables, also from the forward pass."""

    def one_example(x_i, dy_i):
        def output(vals):
            with keras.StatelessScope(state_mapping=list(zip(variables, vals)) + list(constants)):
                return call(jax.tree.map(lambda t: t[None], x_i))

        y, vjp = jax.vjp(output, list(values))
        grads = vjp(dy_i[None].astype(y.dtype))[0]
        return jnp.concatenate([jnp.ravel(g.astype("float32")) for g in grads])

    return jax.vmap(one_example)(inputs, dy)


def tap_first(z, probe, residuals, emit, width):
    """As `keras_lars._backend.tensorflow.tap_first`, by a `jax.custom_vjp`."""

    @jax.custom_vjp
    def first(t, p, residuals):
        return t, jnp.zeros((t.shape[0], width), "float32")

    def forward(t, p, residuals):
        return first(t, p, residuals), residuals

    def backward(residuals, cotangents):
        upstream, mail = cotangents
        return (upstream, jnp.asarray(emit(residuals, upstream, mail), "float32"),
                jax.tree.map(jnp.zeros_like, residuals))

    first.defvjp(forward, backward)
    return first(z, probe, residuals)


def tap_later(z, mailbox, residuals, send):
    """As `keras_lars._backend.tensorflow.tap_later`, by a `jax.custom_vjp`."""

    @jax.custom_vjp
    def later(t, m, residuals):
        return t

    def forward(t, m, residuals):
        return t, residuals

    def backward(residuals, upstream):
        return upstream, jnp.asarray(send(residuals, upstream), "float32"), jax.tree.map(jnp.zeros_like, residuals)

    later.defvjp(forward, backward)
    return later(z, mailbox, residuals)
