"""What every backend shares, and the defaults of a backend without its own
module (LARS runs there through `keras.ops`; the per-example norm taps do not)."""

import contextlib
import re

import keras

#: Whether the per-example norm taps run on this backend.
PER_EXAMPLE_NORMS = False
#: Whether a strided window of a tensor is a slow gather (see `per_example.kernels._Windows`).
SPLIT_STRIDED_WINDOWS = False


def variable_path(variable):
    """`variable.path` ("dense/kernel"); for a raw `tf.Variable` in a Keras
    model, which has no path, its name without the ":0" suffix."""
    path = getattr(variable, "path", None)
    return path if path is not None else re.sub(r":\d+$", "", variable.name)


def maybe_jit(fn, enabled):
    """`fn` itself: only TensorFlow compiles per-variable updates separately."""
    return fn


def fast_norm(x):
    """None: the caller computes ||x|| inside its update."""
    return None


def dense_gradient(gradient):
    """`gradient`: dense already on this backend."""
    return gradient


def colocated_with(variable):
    """A no-op context (placement is TensorFlow's)."""
    return contextlib.nullcontext()


def num_replicas_in_sync():
    """1: a model sees the global batch."""
    return 1


def all_reduce_sum(value):
    """`value` (no replicas to sum over)."""
    return value


def variable_scope_of(model):
    """A no-op context."""
    return contextlib.nullcontext()


def after(tensor):
    """A no-op context: the backend orders its own work."""
    return contextlib.nullcontext()


def unsupported():
    """The error for per-example norms on a backend without taps."""
    return RuntimeError(
        "Per-example gradient norms support the TensorFlow, JAX and PyTorch backends; the Keras "
        f"backend is {keras.backend.backend()!r}."
    )


def tap_identity(z, probe, residuals, emit):
    raise unsupported()


def value_and_gradients(model, loss_fn, variables, extra_shapes):
    raise unsupported()


def vectorized_gradients(call, variables, values, inputs, dy, constants=()):
    raise unsupported()


def tap_first(z, probe, residuals, emit, width):
    raise unsupported()


def tap_later(z, mailbox, residuals, send):
    raise unsupported()
