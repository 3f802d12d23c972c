"""Every access to a private attribute of Keras, in one place, so that a Keras
release that renames one breaks this file only. Tested against the Keras
version `setup.cfg` admits (keras>=3.15)."""

import collections


def own_trainable_variables(layer):
    """The trainable variables `layer` created itself (not its sub-layers'),
    in creation order."""
    return list(layer._trainable_variables)


def sub_layers(layer):
    """`layer`'s list of direct sub-layers, the list itself (mutable)."""
    return layer._layers


def all_layers(model):
    """`model` and every layer inside it, depth first."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def track_variable(layer, variable):
    """Makes `variable` one of `layer`'s own variables again."""
    layer._track_variable(variable)


def causal_padding(layer):
    """A causal `Conv1D`'s left padding, as `ops.pad` takes it."""
    return layer._compute_causal_padding()


def distribute_strategy(model):
    """The `tf.distribute` strategy `model` was built under, or None."""
    return getattr(model, "_distribute_strategy", None)


def optimizer_variables(optimizer):
    """The trainable variables a built optimizer updates, in its order (the
    list itself)."""
    return optimizer._trainable_variables


def optimizer_knows(optimizer, variable):
    """Whether a built optimizer has `variable` among its variables (a bool)."""
    return optimizer._var_key(variable) in optimizer._trainable_variables_indices


def append_optimizer_variable(optimizer, variable):
    """Appends `variable` to a built optimizer's variables (no state made)."""
    optimizer._trainable_variables_indices[optimizer._var_key(variable)] = len(optimizer._trainable_variables)
    optimizer._trainable_variables.append(variable)


def set_keras_mask(tensor, mask):
    """Attaches a Keras mask to `tensor` (as a layer's `call` may)."""
    from keras.src.backend.common.masking import set_keras_mask as set_mask

    if mask is not None:
        set_mask(tensor, mask)


def _graph_nodes(layer):
    """The nodes of `layer`'s functional graph (a Functional model, or a
    Sequential that built one), or None for a layer whose `call` is Python."""
    graph = getattr(layer, "_functional", None) or layer  # Sequential keeps its graph in `_functional`
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if by_depth is None:
        return None
    return [node for nodes in by_depth.values() for node in nodes]


def layer_calls(model):
    """How many times one call of `model` calls each layer inside it: a
    `collections.Counter` keyed by `id(layer)`.

    Read from the graphs of functional models and Sequentials (however they
    were built: `Input`, `add()`, lazily, `load_model`, `clone_model`),
    entering nested models (a model called twice calls its layers twice). A
    layer whose `call` is Python (a subclassed model or layer) counts once
    per call of it for each of its direct sub-layers: what its `call` does is
    not inspected. Not `layer._inbound_nodes`: Sequential's rebuilds add
    nodes without calls.
    """
    counts = collections.Counter()

    def visit(layer, times):
        counts[id(layer)] += times
        nodes = _graph_nodes(layer)
        if nodes is None:
            for sub in getattr(layer, "_layers", ()):
                visit(sub, times)
            return
        per_operation = collections.Counter(id(node.operation) for node in nodes)
        operations = {id(node.operation): node.operation for node in nodes}
        for key, calls in per_operation.items():
            visit(operations[key], times * calls)

    visit(model, 1)
    return counts
