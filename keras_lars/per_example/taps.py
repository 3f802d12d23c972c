"""A layer's tap: its `call` replaced, on the instance, by its rule's forward
with an identity on the output whose gradient carries the per-example norms
(`LayerTap`), or, for a layer called more than once in the model's graph,
the norms of every call together (`SharedLayerTap`)."""

import math

from keras import ops

from keras_lars import _backend, _probes
from keras_lars.per_example.registry import LayerRule, rule_variables
from keras_lars.per_example.vectorized import squared_norms_of


class LayerTap:
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
        self._install(lambda *args, **kwargs: self.rule.forward(self.layer, self._tap, *args, **kwargs))

    def _install(self, tapped):
        # Tapped only inside a call of the model (`PerExampleNorms.tapping`).
        own_call = type(self.layer).call.__get__(self.layer)

        def call(*args, **kwargs):
            return tapped(*args, **kwargs) if self.attachment.tapping else own_call(*args, **kwargs)

        object.__setattr__(self.layer, "call", call)

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


class SharedLayerTap(LayerTap):
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
        original_call = type(self.layer).call.__get__(self.layer)
        self._install(lambda *args, **kwargs: self._forward(original_call, *args, **kwargs))

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
