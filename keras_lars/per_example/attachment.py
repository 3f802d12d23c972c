"""Attaching per-example norm taps to a model: the probes, one `_LayerTap`
per tapped layer, and `PerExampleNorms` (see the package docstring)."""

import math

import keras
from keras import ops

from keras_lars import _backend, _compat, _probes
from keras_lars.per_example.kernels import METHODS
from keras_lars.per_example.registry import LayerRule, rule_for, rule_variables, supported_layers
from keras_lars.per_example.vectorized import _fallback_layers, _vectorized_rule, squared_norms_of

#: What `attach_per_example_norms(unsupported_layers=...)` accepts.
UNSUPPORTED_LAYER_POLICIES = ("error", "vectorized")
_ATTACHMENT = "_keras_lars_per_example_norms"


class _Probes(keras.layers.Layer):
    """Holds an attachment's probe variables. It sits in the sub-layer list
    (`_layers`) of the model's last layer, so the probes come after every
    other variable in `model.trainable_variables` (an optimizer built before
    they existed appends them in the same order) and saving, which walks a
    layer's own variables and named attributes, never sees them."""

    def __init__(self, name):
        super().__init__(name=name, dtype="float32")
        self.built = True

    def add_probe(self, targets, width, name):
        probe = self.add_weight(
            shape=(len(targets), width),
            initializer="zeros",
            dtype="float32",
            trainable=True,
            autocast=False,
            name=name,
        )
        _probes.mark(probe, targets)
        return probe


def _last_layer(model):
    """The layer whose sub-layers come last in `model.variables` and are not
    saved: the last top-level layer, entering nested models."""
    layer = model
    while isinstance(layer, keras.Model):
        if not _compat.sub_layers(layer):
            raise ValueError(f"Model {layer.name!r} has no layers to tap.")
        layer = _compat.sub_layers(layer)[-1]
    return layer


class _LayerTap:
    """One layer's tap: replaces its `call` (on the instance) by its rule's
    forward with the tap, and adds its probe to its sub-layers."""

    def __init__(self, layer, rule, variables, attachment, probe):
        # probe: this layer's probe variable, or None when the attachment
        # feeds probe tensors (`PerExampleNorms.probe_values`).
        self.layer = layer
        self.rule = rule
        self.variables = variables
        self.attachment = attachment
        self.probe = probe
        own = [id(v) for v in rule_variables(rule, layer)]
        self._rows = [own.index(id(v)) for v in variables]

    def install(self):
        layer = self.layer
        object.__setattr__(layer, "call", lambda *args, **kwargs: self.rule.forward(layer, self._tap, *args, **kwargs))

    def remove(self):
        if self.layer.__dict__.get("call") is not None:
            object.__delattr__(self.layer, "call")

    def _tap(self, z, residuals):
        self._check_batch(z)
        self._count_call()
        return _backend.tap_identity(z, self.attachment.probe_value(self), residuals, self._emit)

    def _check_batch(self, z):
        batch = self.attachment.input_batch
        if z.shape[0] == 1 and batch != 1:
            raise ValueError(
                f"Layer {self.layer.name!r} ({type(self.layer).__name__}) is called on a batch of 1 in a step on "
                f"a batch of {batch or 'B'}: its output is broadcast over the examples (e.g. a position table "
                "looked up with position ids of batch 1), so its own tap sees their sum, not the examples. "
                "Register a rule for the layer that calls it (keras_lars.register_layer) or exclude its "
                "variables from layer adaptation."
            )

    def _count_call(self):
        calls = self.attachment.tap_calls
        calls[id(self)] = calls.get(id(self), 0) + 1
        if calls[id(self)] > 1:
            raise ValueError(
                f"Layer {self.layer.name!r} ({type(self.layer).__name__}) is called more than once in one call of "
                f"model {self.attachment.model.name!r}, which its graph does not show (a subclassed model's "
                "call): its per-example norms would be wrong. Build the model with the functional API (shared "
                "layers are then exact) or exclude the layer's variables from layer adaptation."
            )

    def _emit(self, residuals, d):
        residuals, d, scale = self.attachment.sub_batch(residuals, d)
        squared = self.rule.squared_norms(self.layer, residuals, d, self.attachment.method)
        # None: this call does not touch the variable (a layer with several
        # call modes, e.g. ReversibleEmbedding's lookup and reverse).
        return ops.stack([self.attachment.row(squared[j], scale, ops.shape(d)[0]) for j in self._rows])


class _SharedLayerTap(_LayerTap):
    """The tap of a layer the model calls `calls` times per step (tied
    input/output embeddings, a Siamese tower): example i's gradient is the
    sum of its calls' contributions, whose norm is not the sum of their
    norms. Each call's per-example gradients are formed whole (the
    vectorized route: one small backward pass of the layer's call per
    example, B times the variables' size in memory); the later calls send
    theirs back to the first call's tap through a mailbox tensor (as a
    cotangent: `_backend.tap_first`, `tap_later`), which adds them up and
    emits the norms. The calls are counted off in order, `calls` per call of
    the model (`_compat.layer_calls`)."""

    def __init__(self, layer, variables, attachment, probe, calls):
        super().__init__(layer, LayerRule(None, None, variables=tuple(variables)), variables, attachment, probe)
        self.calls = calls
        tracked = {id(v) for v in variables}
        self._constants = [v for v in layer.variables if id(v) not in tracked and not _probes.is_probe(v)]
        self._width = sum(math.prod(v.shape) for v in variables)
        self._index, self._mailbox = 0, None

    def install(self):
        self._index, self._mailbox = 0, None
        layer = self.layer
        original_call = type(layer).call.__get__(layer)
        object.__setattr__(layer, "call", lambda *args, **kwargs: self._forward(original_call, *args, **kwargs))

    def _forward(self, original_call, *args, **kwargs):
        outputs = original_call(*args, **kwargs)
        if not args or not ops.is_tensor(args[0]) or not ops.is_tensor(outputs):
            raise ValueError(
                f"Per-example norms of layer {self.layer.name!r} ({type(self.layer).__name__}), called "
                f"{self.calls} times per step, need its call to take a tensor first and return one tensor."
            )
        self._check_batch(outputs)
        call = lambda x: original_call(x, *args[1:], **kwargs)  # noqa: E731
        residuals = (args[0], tuple(v.value for v in self.variables), tuple(v.value for v in self._constants))

        def gradients(residuals, d):
            inputs, values, constant_values = residuals
            return _backend.vectorized_gradients(call, self.variables, values, inputs, d,
                                                 list(zip(self._constants, constant_values)))

        index, self._index = self._index, (self._index + 1) % self.calls
        if index == 0:
            outputs, self._mailbox = _backend.tap_first(
                outputs, self.attachment.probe_value(self), residuals,
                lambda residuals, d, mail: self._rows_of(gradients(residuals, d) + ops.cast(mail, "float32")),
                self._width)
            return outputs
        return _backend.tap_later(outputs, self._mailbox, residuals, gradients)

    def _rows_of(self, flat):
        _, flat, scale = self.attachment.sub_batch((), flat)
        squared = squared_norms_of(flat, self.variables)
        return ops.stack([self.attachment.row(squared[j], scale, ops.shape(flat)[0]) for j in self._rows])


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
            self._host = _last_layer(model)
            self._holder = _Probes(name="per_example_norm_probes")
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
                self.taps.append(_SharedLayerTap(layer, tracked, self, probe, count) if count > 1
                                 else _LayerTap(layer, rule, tracked, self, probe))

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
        the model, for the taps' check of layers called on a batch of 1."""
        self.input_batch = None
        self.tap_calls = {}  # tap id -> its calls in the current call of the model
        if self.model in (tap.layer for tap in self.taps):
            return
        model_call = type(self.model).call.__get__(self.model)

        def call(*args, **kwargs):
            tensors = keras.tree.flatten((args, kwargs))
            first = next((t for t in tensors if hasattr(t, "shape") and len(t.shape) > 0), None)
            self.input_batch = None if first is None else first.shape[0]
            self.tap_calls = {}
            return model_call(*args, **kwargs)

        object.__setattr__(self.model, "call", call)

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
