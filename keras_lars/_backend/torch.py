"""PyTorch: the tap as a `torch.autograd.Function`, gradients by
`torch.autograd.grad`. Keras's torch train step calls `loss.backward()` and
reads each variable's `.grad`, the probes' included."""

import keras
import torch

from keras_lars._backend.common import (  # noqa: F401 (the defaults PyTorch keeps)
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
# A strided slice is a view here.
SPLIT_STRIDED_WINDOWS = False


def dense_gradient(gradient):
    """Densifies a sparse gradient, summing rows of repeated indices."""
    return gradient.to_dense() if getattr(gradient, "is_sparse", False) else gradient


class _Tap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, probe, emit, residuals):
        # The residuals ride on ctx as a structure: the tap gives them no gradient.
        ctx.emit, ctx.residuals, ctx.probe_dtype = emit, residuals, probe.dtype
        return z.view_as(z)

    @staticmethod
    def backward(ctx, upstream):
        return upstream, ctx.emit(ctx.residuals, upstream).to(ctx.probe_dtype), None, None


def tap_identity(z, probe, residuals, emit):
    """As `keras_lars._backend.tensorflow.tap_identity`, by a
    `torch.autograd.Function`."""
    residuals = keras.tree.map_structure(lambda t: t.detach(), residuals)
    return _Tap.apply(z, probe, emit, residuals)


def value_and_gradients(model, loss_fn, variables, extra_shapes):
    """As `keras_lars._backend.tensorflow.value_and_gradients`, by
    `torch.autograd.grad`; a variable or extra the loss does not reach gets
    zeros."""
    extras = [keras.ops.zeros(shape, "float32").requires_grad_() for shape in extra_shapes]
    value = loss_fn(extras)
    targets = [v.value for v in variables] + extras
    grads = torch.autograd.grad(value, targets, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]
    return value, grads[: len(variables)], grads[len(variables):]


def vectorized_gradients(call, variables, values, inputs, dy, constants=()):
    """As `keras_lars._backend.tensorflow.vectorized_gradients`, by one
    `torch.autograd.grad` of the layer's call per example (it runs inside
    the backward pass, where autograd is re-enabled for it)."""
    parameters = [v.value for v in variables]
    rows = []
    with torch.enable_grad():
        for i in range(dy.shape[0]):
            x_i = keras.tree.map_structure(lambda t: t[i : i + 1].detach(), inputs)
            y_i = call(x_i)
            grads = torch.autograd.grad(y_i, parameters, grad_outputs=dy[i : i + 1].to(y_i.dtype), allow_unused=True)
            rows.append(torch.cat([
                torch.zeros(p.numel(), dtype=torch.float32, device=dy.device) if g is None else g.float().reshape(-1)
                for g, p in zip(grads, parameters)
            ]))
    return torch.stack(rows)


class _First(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, probe, emit, residuals, width):
        ctx.emit, ctx.residuals, ctx.probe_dtype = emit, residuals, probe.dtype
        return z.view_as(z), torch.zeros((z.shape[0], width), dtype=torch.float32, device=z.device)

    @staticmethod
    def backward(ctx, upstream, mail):
        return upstream, ctx.emit(ctx.residuals, upstream, mail).to(ctx.probe_dtype), None, None, None


class _Later(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, mailbox, send, residuals):
        ctx.send, ctx.residuals = send, residuals
        return z.view_as(z)

    @staticmethod
    def backward(ctx, upstream):
        return upstream, ctx.send(ctx.residuals, upstream).float(), None, None


def tap_first(z, probe, residuals, emit, width):
    """As `keras_lars._backend.tensorflow.tap_first`, by a `torch.autograd.Function`."""
    return _First.apply(z, probe, emit, keras.tree.map_structure(lambda t: t.detach(), residuals), width)


def tap_later(z, mailbox, residuals, send):
    """As `keras_lars._backend.tensorflow.tap_later`, by a `torch.autograd.Function`."""
    return _Later.apply(z, mailbox, send, keras.tree.map_structure(lambda t: t.detach(), residuals))
