"""Attaching per-example norm taps to a model: `PerExampleNorms` (one
`taps.LayerTap` per tapped layer, their probes in a `probes.Probes`) and
`attach_per_example_norms` (see the package docstring). About 350 lines:
most of it is the attach-time checks, each with the error it raises (a
layer the registry does not know, a probe width, a batch the taps cannot
split), kept beside the attachment they guard."""

import math

import keras
from keras import ops

from keras_lars import _backend, _compat, _probes
from keras_lars.per_example.kernels import METHODS
from keras_lars.per_example.registry import rule_for, rule_variables, supported_layers
from keras_lars.per_example.probes import Probes, last_layer
from keras_lars.per_example.taps import LayerTap, SharedLayerTap
from keras_lars.per_example.vectorized import _fallback_layers, _vectorized_rule

#: What `attach_per_example_norms(unsupported_layers=...)` accepts.
UNSUPPORTED_LAYER_POLICIES = ("error", "vectorized")
_ATTACHMENT = "_keras_lars_per_example_norms"


class PerExampleNorms:
    """An attachment of per-example norm taps to a model's layers; see
    `attach_per_example_norms`. `detach()` restores the layers.

    Attributes:
        model: the model.
        variables: the tracked variables.
        probes: the probe variables (trainable variables of the model while
            attached), each of shape (k, width): width 3 (the sums) or, for
            `per_example_squared_norms`, the number of examples.
    """

    def __init__(self, model, variables, method, sub_batch_size, unsupported_layers, per_example_width=None,
                 reuse=None, probe_variables=True):
        self.model = model
        self.variables = list(variables)
        self.method = method
        self.sub_batch_size = sub_batch_size
        # The mode is explicit: a width of 3 examples must not read as the sums.
        self.per_example = per_example_width is not None
        self.width = per_example_width if self.per_example else 3
        owners = _claimed(model, _owners(model))
        inside = _fallback_layers(self.variables, owners) if unsupported_layers == "vectorized" else {}
        by_layer, unsupported = {}, []
        for variable in self.variables:
            layer = owners.get(id(variable))
            layer = inside.get(id(layer), layer)
            rule = None if layer is None or id(layer) in inside else rule_for(layer)
            if rule is None and (layer is None or id(layer) not in inside):
                unsupported.append((variable, layer))
                continue
            if rule is not None and rule.check is not None:
                rule.check(layer)
            by_layer.setdefault(id(layer), [layer, rule, []])[2].append(variable)
        for entry in by_layer.values():
            if entry[1] is None:
                entry[1] = _vectorized_rule(entry[0], entry[2])
        if unsupported:
            raise ValueError(_unsupported_message(unsupported))
        calls = _compat.layer_calls(model)
        reuse = reuse or {}
        self.taps = []
        # One-pass functions feed probe tensors instead (`probe_values`): no
        # variables are created, so they run inside a tf.function too.
        self.probe_values = None
        self._holder = self._host = None
        if probe_variables:
            self._host = last_layer(model)
            self._holder = Probes(name="per_example_norm_probes")
        with _backend.variable_scope_of(model):
            for layer, rule, tracked in by_layer.values():
                probe = reuse.get(id(layer))
                if not probe_variables:
                    probe = None
                elif probe is None or _probes.targets(probe) != tuple(tracked) or probe.shape[1] != self.width:
                    probe = self._holder.add_probe(tracked, self.width, f"{layer.name}_per_example_norms")
                else:
                    _compat.track_variable(self._holder, probe)
                count = calls[id(layer)]
                self.taps.append(SharedLayerTap(layer, tracked, self, probe, count) if count > 1
                                 else LayerTap(layer, rule, tracked, self, probe))

    @property
    def probes(self):
        """The probe variables, in `model.trainable_variables` order."""
        return [tap.probe for tap in self.taps if tap.probe is not None]

    def probe_value(self, tap):
        if self.probe_values is not None:
            return self.probe_values[self.taps.index(tap)]
        return tap.probe.value

    def install(self, forget_compiled=True):
        for tap in self.taps:
            tap.install()
        self._watch_input_batch()
        if self._holder is not None and self._holder not in _compat.sub_layers(self._host):
            _compat.sub_layers(self._host).append(self._holder)
        object.__setattr__(self.model, _ATTACHMENT, self)
        if forget_compiled:
            _forget_compiled_functions(self.model)

    def detach(self, forget_compiled=True):
        """Restores the layers' own `call` and removes the probes; CLARS then
        fails at its next step.

        Args:
            forget_compiled: drop the model's compiled train/test/predict
                functions (they hold the old variable list); False only for
                a detach that is undone before the model trains again.
        """
        for tap in self.taps:
            tap.remove()
        if self.model.__dict__.get("call") is not None and self.model not in (t.layer for t in self.taps):
            object.__delattr__(self.model, "call")
        if self._holder is not None and self._holder in _compat.sub_layers(self._host):
            _compat.sub_layers(self._host).remove(self._holder)
        if self.model.__dict__.get(_ATTACHMENT) is self:
            object.__delattr__(self.model, _ATTACHMENT)
        if forget_compiled:
            _forget_compiled_functions(self.model)

    def _watch_input_batch(self):
        """Records the static batch size (an int, or None) of each call of
        the model, for the taps' check of layers called on a batch of 1, and
        whether a call of the model is under way (`tapping`)."""
        self.input_batch = None
        self.tap_calls = {}  # tap id -> its calls in the current call of the model
        self._model_calls = 0
        self._watching = self.model not in (tap.layer for tap in self.taps)
        if not self._watching:
            return
        model_call = type(self.model).call.__get__(self.model)

        def call(*args, **kwargs):
            tensors = keras.tree.flatten((args, kwargs))
            first = next((t for t in tensors if hasattr(t, "shape") and len(t.shape) > 0), None)
            self.input_batch = None if first is None else first.shape[0]
            self.tap_calls = {}
            self._model_calls += 1
            try:
                return model_call(*args, **kwargs)
            finally:
                self._model_calls -= 1

        object.__setattr__(self.model, "call", call)

    @property
    def tapping(self):
        """Whether a tapped layer called now is part of a call of the model.
        A layer called on its own (SavedModel export traces each layer's call
        apart from the model; a user may call `model.layers[i]`) runs its own
        `call`, untapped: its taps' norms and call counts are the model's."""
        return self._model_calls > 0 or not self._watching

    def sub_batch(self, residuals, d):
        """The first |J| examples (on TensorFlow, per replica: ceil(|J| /
        replicas)) of the residuals and d, and the factor (batch / |J|) that
        scales their sum to the batch (None without a sub-batch)."""
        if self.sub_batch_size is None:
            return residuals, d, None
        count = math.ceil(self.sub_batch_size / _backend.num_replicas_in_sync())
        batch = ops.shape(d)[0]
        scale = ops.cast(batch, "float32") / ops.cast(ops.minimum(batch, count), "float32")
        return keras.tree.map_structure(lambda x: x[:count], residuals), d[:count], scale

    def row(self, squared, scale, n):
        """A probe row from one variable's per-example squared norms (n,):
        `[sum_i ||c_i||, sum_i ||c_i||^2, n]` scaled from the sub-batch to
        the batch, or (width n) the squared norms themselves; zeros for
        None (a call that does not touch the variable)."""
        if squared is None:
            return ops.zeros((n if self.per_example else 3,), "float32")
        squared = ops.cast(squared, "float32")
        if self.per_example:
            return squared
        count = ops.cast(ops.shape(squared)[0], "float32")
        sums = ops.stack([ops.sum(ops.sqrt(squared)), ops.sum(squared), count])
        return sums if scale is None else sums * ops.cast(scale, "float32")


def _forget_compiled_functions(model):
    # The compiled train/test/predict functions closed over the old variable list.
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def _unsupported_message(unsupported):
    # One line per layer class (a model may have hundreds of such variables).
    groups = {}
    for v, l in unsupported:
        groups.setdefault(None if l is None else type(l).__name__, []).append((v, l))
    lines = []
    for kind, members in groups.items():
        layers = {id(l) for _, l in members}
        variable, layer = members[0]
        example = repr(_backend.variable_path(variable)) + ("" if layer is None else f" of layer {layer.name!r}")
        where = "owned by no layer of the model" if kind is None else f"in {len(layers)} {kind} layer(s)"
        lines.append(f"  {len(members)} variable(s) {where}, e.g. {example}")
    lines = "\n".join(lines)
    return (
        "Per-example gradient norms are implemented for "
        f"{', '.join(supported_layers())} (without LoRA, quantization or an overridden "
        f"`call`); these adapted variables belong elsewhere:\n{lines}\n"
        "Exclude them from layer adaptation (`exclude_from_layer_adaptation=`), register the layer "
        "class (`keras_lars.register_layer`), or pass unsupported_layers='vectorized' for exact "
        "per-example gradients of those layers by vectorized map (slow: one small backward pass "
        "per example)."
    )


def _claimed(model, owners):
    """`owners` (variable id -> owning layer) with the variables a rule of an
    outer layer claims (`LayerRule.variables`, e.g. a ViT patcher's
    sub-layers') given to that layer: its tap sees their gradients whole."""
    owners = dict(owners)
    for layer in _compat.all_layers(model):
        rule = rule_for(layer)
        if rule is not None and rule.variables is not None:
            for variable in rule_variables(rule, layer):
                owners[id(variable)] = layer
    return owners


def _owners(model):
    owners = {}
    for layer in _compat.all_layers(model):
        for variable in _compat.own_trainable_variables(layer):
            owners[id(variable)] = layer
    return owners


def _inner_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    return getattr(optimizer, "inner_optimizer", optimizer)


def _default_variables(model):
    # Duck-typed (no import of CLARS): the variables an optimizer that
    # consumes per-example norms adapts.
    optimizer = _inner_optimizer(model)
    if getattr(optimizer, "uses_per_example_norms", False):
        variables = [v for v in model.trainable_variables if not _probes.is_probe(v)]
        return [v for v, adapt in zip(variables, optimizer.adapts(variables)) if adapt]
    return None


def _check_options(method, sub_batch_size, unsupported_layers):
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: {method!r}")
    if unsupported_layers not in UNSUPPORTED_LAYER_POLICIES:
        raise ValueError(
            f"`unsupported_layers` must be one of {UNSUPPORTED_LAYER_POLICIES}. Received: {unsupported_layers!r}"
        )
    if sub_batch_size is not None and (
        isinstance(sub_batch_size, bool) or not isinstance(sub_batch_size, int) or sub_batch_size < 1
    ):
        raise ValueError(f"`sub_batch_size` must be None or an int >= 1. Received: {sub_batch_size!r}")


def attached(model):
    """The model's active `PerExampleNorms`, or None."""
    return model.__dict__.get(_ATTACHMENT)


def attach_per_example_norms(model, variables=None, *, method="auto", sub_batch_size=None, unsupported_layers="error"):
    """Makes every train step of `model` compute the per-example gradient norms CLARS needs.

    The one extra line CLARS needs, after `model.compile(optimizer=CLARS(...))`
    and before the first step (functional, sequential or subclassed models,
    `fit` or a custom loop; TensorFlow, JAX or PyTorch):

    ```python
    model.compile(optimizer=keras_lars.CLARS(learning_rate=...), loss=..., metrics=...)
    keras_lars.attach_per_example_norms(model)
    model.fit(...)
    ```

    Each layer owning a variable to track gets a tap on its pre-activation
    output and a probe variable whose gradient is the variable's norm sums
    (see this module's docstring); a custom loop computes the gradients of
    `model.trainable_variables` (the probes included) and passes them all to
    `optimizer.apply`. Per-example gradients are never formed for the whole
    model: per layer either B kernel-sized gradients or B (T x T) Gram
    matrices ("ghost norm"), whichever `method` picks. Attaching again
    replaces the previous attachment (keeping its probes where the tracked
    variables are the same). While attached, `model.get_weights()` includes
    the probes; saved files never do.

    Args:
        model: a built `keras.Model` (its variables exist).
        variables: the `keras.Variable`s to track; None (default): those the
            model's CLARS optimizer adapts (the optimizer must be set by
            `compile`; a `LossScaleOptimizer` around CLARS is fine).
        method: "auto" (default: per layer, the cheaper of the two from the
            shapes, `per_example.kernels.choose_method`), "ghost" or "materialize".
        sub_batch_size: None (all examples) or an int |J| >= 1: estimate n_k
            on the first |J| examples of the global batch (on TensorFlow,
            ceil(|J| / replicas) per replica), scaled to the batch:
            (B / |J|) * sum_{j in J} ||c_j||. The paper uses |J| = 512. Caps
            the cost at large batch.
        unsupported_layers: "error" (default) or "vectorized": for layers
            without a rule (`supported_layers()`), exact per-example
            gradients of the layer by a vectorized map of one small backward
            pass per example (slow; exact when the layer treats examples
            independently, i.e. not BatchNormalization in training mode).

    Returns:
        A `PerExampleNorms`; its `detach()` restores the layers.

    Raises:
        RuntimeError: on a Keras backend other than TensorFlow, JAX or PyTorch.
        ValueError: for an unbuilt model, no variables to track, a bad
            `method`, `sub_batch_size` or `unsupported_layers`, tracked
            variables of unsupported layers (with "error") or shared layers,
            all named; or an optimizer already built without the probes
            (attach before the first step).
    """
    _check_options(method, sub_batch_size, unsupported_layers)
    if not _backend.PER_EXAMPLE_NORMS:
        raise _backend.unsupported()
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built: build it (call it on data, or give it an Input) "
            "before attaching per-example norms."
        )
    if variables is None:
        variables = _default_variables(model)
        if variables is None:
            raise ValueError(
                "`variables` is None and the model's optimizer is not CLARS "
                f"(it is {type(getattr(model, 'optimizer', None)).__name__}): compile with "
                "keras_lars.CLARS first, or pass the variables to track."
            )
    if not variables:
        raise ValueError(f"No variables to track in model {model.name!r}.")
    return _attach(model, variables, method, sub_batch_size, unsupported_layers, check_optimizer=True)


def _attach(model, variables, method, sub_batch_size, unsupported_layers, check_optimizer=False):
    previous = attached(model)
    reuse = {id(tap.layer): tap.probe for tap in previous.taps} if previous is not None else None
    attachment = PerExampleNorms(model, variables, method, sub_batch_size, unsupported_layers, reuse=reuse)
    optimizer = _inner_optimizer(model)
    if check_optimizer and optimizer is not None and optimizer.built:
        # E.g. a model restored by `keras.models.load_model`: CLARS appends
        # the probes (no state of their own) after the variables it knows.
        track = getattr(optimizer, "track_probes", None)
        if track is None and not all(_compat.optimizer_knows(optimizer, p) for p in attachment.probes):
            raise ValueError(
                f"The optimizer of model {model.name!r} ({type(optimizer).__name__}) was built before "
                "the per-example norm probes existed: attach per-example norms after `compile` and "
                "before the first training step."
            )
    if previous is not None:
        previous.detach()
    attachment.install()
    if check_optimizer and optimizer is not None and optimizer.built and getattr(optimizer, "track_probes", None):
        optimizer.track_probes(attachment.probes)
    return attachment
