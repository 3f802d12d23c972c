"""Backend-specific glue, chosen once at import from Keras's backend (as
Keras chooses its own): one module per backend, each with the same functions.

- `maybe_jit(fn, enabled)`: `fn` compiled with XLA where that helps (TensorFlow).
- `fast_norm(x)`: ||x|| computed outside XLA where that is faster, else None.
- `dense_gradient(g)`: a sparse gradient densified (repeated rows summed).
- `colocated_with(variable)`: a context placing new variables with `variable`.
- `tap_identity(z, probe, residuals, emit)`: the per-example norm tap.
- `num_replicas_in_sync()`, `all_reduce_sum(value)`: `tf.distribute` replicas.
- `variable_scope_of(model)`: the context `model`'s variables were made in.
- `value_and_gradients(model, loss_fn, variables, extra_shapes)`.
- `vectorized_gradients(call, variables, values, inputs, dy, constants)`:
  per-example gradients of a layer's call, flattened side by side.
- `tap_first(z, probe, residuals, emit, width)`, `tap_later(z, mailbox,
  residuals, send)`: the taps of a layer called more than once per step.
- `after(tensor)`: a context running what follows after `tensor` (memory).
- `SPLIT_STRIDED_WINDOWS`: whether strided conv windows are gathered slowly.
- `PER_EXAMPLE_NORMS`: whether the taps run on this backend.

Each module documents its functions; `common` holds the shared defaults.
"""

import keras

from keras_lars._backend.common import unsupported, variable_path  # noqa: F401

_BACKEND = keras.backend.backend()
if _BACKEND == "tensorflow":
    from keras_lars._backend.tensorflow import *  # noqa: F401,F403
elif _BACKEND == "jax":
    from keras_lars._backend.jax import *  # noqa: F401,F403
elif _BACKEND == "torch":
    from keras_lars._backend.torch import *  # noqa: F401,F403
else:  # LARS runs on any backend through keras.ops; the taps do not.
    from keras_lars._backend.common import *  # noqa: F401,F403
