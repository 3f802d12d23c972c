"""The fallback for layers without a rule (`unsupported_layers="vectorized"`):
exact per-example gradients of the layer's whole call by a vectorized map of
one small backward pass per example."""

import math

from keras import ops

from keras_lars import _backend, _compat, _probes
from keras_lars.per_example.registry import LayerRule, rule_for


def squared_norms_of(flat, variables):
    """Each variable's per-example squared norms, float32 (B,) tensors, from
    flattened per-example gradients side by side, (B, sum of sizes)."""
    norms, start = [], 0
    for variable in variables:
        size = math.prod(variable.shape)
        norms.append(ops.sum(ops.square(flat[:, start : start + size]), axis=1))
        start += size
    return tuple(norms)


def _fallback_layers(variables, owners):
    """The layers the vectorized fallback takes whole: those owning one of
    `variables` without a rule. Returns `{id(layer): fallback layer}` for them
    and every layer inside them (their calls run inside the fallback's, so
    their variables go to it; the outermost fallback wins)."""
    taken = {}
    for variable in variables:
        layer = owners.get(id(variable))
        if layer is not None and rule_for(layer) is None:
            taken[id(layer)] = layer
    inside = {}
    for layer in sorted(taken.values(), key=lambda l: -len(_compat.all_layers(l))):
        for sub in _compat.all_layers(layer):
            inside.setdefault(id(sub), layer)
    return inside


def _vectorized_rule(layer, variables):
    """A rule for any layer whose call takes a tensor (the batch on axis 0)
    first and returns one tensor: the tap on its output; per-example
    gradients of `variables` (its own or its sub-layers') by a vectorized
    map of one small backward pass of the layer's whole call per example
    (exact when the layer treats examples independently). The call's other
    arguments are passed unchanged. A variable the output does not depend
    on gets zeros."""
    original_call = layer.call
    variables = list(variables)
    # The layer's other variables (non-trainable ones, untracked weights),
    # read in the forward pass: on JAX the backward pass may not read them.
    tracked = {id(v) for v in variables}
    constants = [v for v in layer.variables if id(v) not in tracked and not _probes.is_probe(v)]
    calls = []  # the latest call's arguments: one call per step (shared layers are refused)

    def forward(layer, tap, *args, **kwargs):
        outputs = original_call(*args, **kwargs)
        if not args or not ops.is_tensor(args[0]) or not ops.is_tensor(outputs):
            raise ValueError(
                f"The vectorized per-example fallback needs layer {layer.name!r} "
                f"({type(layer).__name__}) to take a tensor first and return one tensor."
            )
        calls[:] = [lambda x: original_call(x, *args[1:], **kwargs)]
        return tap(outputs, (args[0], tuple(v.value for v in variables), tuple(v.value for v in constants)))

    def squared_norms(layer, residuals, dy, method):
        inputs, values, constant_values = residuals
        flat = _backend.vectorized_gradients(calls[0], variables, values, inputs, dy, list(zip(constants, constant_values)))
        return squared_norms_of(flat, variables)

    return LayerRule(forward, squared_norms, variables=tuple(variables))
