"""Per-example norms of one batch, outside a train step: one forward and one
backward pass with a temporary attachment whose probes are tensors."""

import math

import keras
from keras import ops

from keras_lars import _backend, _probes
from keras_lars.per_example.attachment import PerExampleNorms, _check_options, _default_variables, attached


def per_example_gradient_norms(model, x, y, loss, variables=None, *, sample_weight=None, training=True, **options):
    """n_k = (1/B) * sum_i ||grad_k f_i(w)|| for each variable, in one forward
    and one backward pass (Eq. 5 of Huo et al.'s denominator).

    Args:
        model: a built `keras.Model`.
        x, y: one batch: inputs and targets, B examples.
        loss: `loss(y, y_pred, sample_weight=None)` -> scalar, the MEAN over the
            batch of per-example losses f_i (e.g.
            `keras.losses.SparseCategoricalCrossentropy()`; Keras's default
            reduction). Regularisation losses are not included.
        variables: the variables; None: those the model's CLARS adapts, else
            every trainable variable with ndim >= 2.
        sample_weight: optional (B,) weights passed to `loss`.
        training: passed to the model call (BatchNorm in training mode: see
            this module's docstring for what the norms then mean).
        **options: `method`, `sub_batch_size`, `unsupported_layers` as in
            `attach_per_example_norms`.

    Returns:
        `(norms, gradients, loss_value)`: float32 scalars n_k aligned with
        `variables`, the batch gradients, and the loss.

    Raises:
        ValueError, RuntimeError: as `keras_lars.attach_per_example_norms`.
    """
    rows, gradients, loss_value = _one_pass(model, x, y, loss, variables, sample_weight, training, options, None)
    return [row[0] for row in rows], gradients, loss_value


def per_example_squared_norms(model, x, y, loss, variables=None, *, sample_weight=None, training=True, **options):
    """Per-example squared gradient norms ||grad_k f_i(w)||^2, for each
    variable and example, in one forward and one backward pass: what the
    gradient variance factor M_k of Huo et al. (Fig. 2) is made of,
    `keras_lars.layer_statistics.gradient_variance_factor(squared, gradient)`.

    Arguments as `per_example_gradient_norms` (`loss` is the MEAN over the B
    examples; with `sample_weight`, f_i is example i's weighted loss).

    Returns:
        `(squared, gradients, loss_value)`: for each variable a float32 (B,)
        tensor (with `sub_batch_size` |J|: (|J|,), the first |J| examples),
        the batch gradients, and the loss.

    Raises:
        ValueError, RuntimeError: as `keras_lars.attach_per_example_norms`.
    """
    batch = int(ops.shape(keras.tree.flatten(x)[0])[0])
    sub_batch = options.get("sub_batch_size")
    width = batch if sub_batch is None else min(batch, math.ceil(sub_batch / _backend.num_replicas_in_sync()))
    rows, gradients, loss_value = _one_pass(model, x, y, loss, variables, sample_weight, training, options, width)
    # c_i = grad f_i / B for a loss averaged over the batch of B examples.
    return [row * float(batch) ** 2 for row in rows], gradients, loss_value


def _one_pass(model, x, y, loss, variables, sample_weight, training, options, per_example_width):
    """One forward and backward pass with a temporary attachment whose probes
    hold the sums (`per_example_width` None) or that many per-example
    squared norms; returns (each variable's probe row, the gradients,
    the loss). A previous attachment is restored afterwards."""
    method = options.get("method", "auto")
    sub_batch_size = options.get("sub_batch_size")
    unsupported_layers = options.get("unsupported_layers", "error")
    unknown = set(options) - {"method", "sub_batch_size", "unsupported_layers"}
    if unknown:
        raise TypeError(f"Unknown options {sorted(unknown)}; accepted: method, sub_batch_size, unsupported_layers.")
    _check_options(method, sub_batch_size, unsupported_layers)
    if variables is None:
        variables = _default_variables(model)
        if variables is None:
            variables = [v for v in model.trainable_variables if len(v.shape) >= 2 and not _probes.is_probe(v)]
    # A temporary attachment without variables: the model's compiled
    # functions stay valid (a callback may call this during `fit`).
    previous = attached(model)
    if previous is not None:
        previous.detach(forget_compiled=False)
    attachment = PerExampleNorms(
        model, variables, method, sub_batch_size, unsupported_layers, per_example_width, probe_variables=False
    )
    attachment.install(forget_compiled=False)
    try:

        def loss_fn(probe_values):
            attachment.probe_values = probe_values
            return loss(y, model(x, training=training), sample_weight=sample_weight)

        shapes = [(len(tap.variables), attachment.width) for tap in attachment.taps]
        loss_value, gradients, probe_grads = _backend.value_and_gradients(model, loss_fn, variables, shapes)
    finally:
        attachment.detach(forget_compiled=False)
        if previous is not None:
            previous.install(forget_compiled=False)
    rows = {}
    for tap, grad in zip(attachment.taps, probe_grads):
        for j, target in enumerate(tap.variables):
            rows[id(target)] = grad[j]
    return [rows[id(v)] for v in variables], gradients, loss_value
