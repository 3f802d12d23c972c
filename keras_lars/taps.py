"""Per-example gradient norms inside the ordinary train step, on TensorFlow, JAX and PyTorch.

How the norms travel: as gradients. `attach_per_example_norms(model)` gives
every layer owning a variable CLARS adapts a *probe*: a zero-valued float32
trainable variable of shape (k, 3), one row per tracked variable of the
layer, that the forward pass never uses. The layer's forward pass is its
own, plus an identity "tap" on its pre-activation output z (before the bias)
whose custom gradient passes dL/dz through unchanged and returns, as the
probe's cotangent, each tracked variable's

    [sum_i ||c_i||, sum_i ||c_i||^2, B]            (B: examples in the batch)

computed from d = dL/dz and the layer input a kept from the forward pass
(`keras_lars.per_example_norms`), c_i being example i's contribution to the
gradient. So Keras's own `train_step` computes the norm sums as the probes'
"gradients", in the same forward and backward pass as the gradient, and
hands them to the optimizer with the other gradients, through the
framework's own plumbing: `jax.grad`, `tf.GradientTape`, XLA, gradient
accumulation (summed with the gradients, then averaged), loss scaling
(unscaled with them), JAX's SPMD data parallelism (a cotangent of a
replicated variable is summed over the batch's shards). `CLARS.apply` takes
the probes' gradients out of the list (they are never applied, and have no
optimizer state) and, under `tf.distribute`, sums them over the replicas
as the gradients are. (Not `overwrite_with_gradient`: `LossScaleOptimizer`
would not unscale them.) Why not a side channel: JAX's transformations only
return what is a function of their inputs, and module-level tables keyed by
thread and graph needed hand-carrying across every XLA boundary.

No state lives in this module except `LAYER_RULES`, the registry of how to
tap each layer class (`register_layer`). An attachment lives on its model;
the probes live in the tapped layers' sub-layer list, which saving skips:
a saved model (`model.save`, `save_weights`) holds only the layers' own
variables and loads into a model built without taps.

With a loss averaged over the global batch B (Keras's default reduction; on
`tf.distribute` Keras also divides each replica's loss by the number of
replicas), c_i = grad f_i / B, so sum_i ||c_i|| = (1/B) sum_i ||grad f_i||.

BatchNorm in training mode couples the examples of a batch; d then carries
the batch statistics' cross-example terms and c_i = a_i (x) d_i is example
i's contribution to the batch gradient, the quantity hook-based per-example
methods (Opacus, BackPACK) compute; it is not the gradient of f_i evaluated
on example i alone.

A layer called more than once per step (a shared layer) would add the norm
sums of its calls, which is not the norm of its summed per-example
gradients: layers with more than one call in a functional graph are refused
at attach time (a subclassed model's `call` is not inspected).
"""

import dataclasses
import math

import keras
from keras import ops

from keras_lars import _backend, _compat, _probes
from keras_lars._probes import is_probe  # noqa: F401 (public: tell probes from weights)
from keras_lars.per_example_norms import METHODS, conv_squared_norms, dense_squared_norms

#: What `attach_per_example_norms(unsupported_layers=...)` accepts.
UNSUPPORTED_LAYER_POLICIES = ("error", "vectorized")
_ATTACHMENT = "_keras_lars_per_example_norms"


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How to tap one layer class.

    Attributes:
        forward: `forward(layer, tap, *args, **kwargs) -> outputs`, the
            layer's `call(*args, **kwargs)` with one call
            `z = tap(z, residuals)` on the output z whose gradient
            d = dL/dz gives the per-example gradients of the layer's own
            trainable variables (for Dense: x @ kernel, before the bias).
            `residuals` is a tensor or a tuple of tensors from the forward
            pass (e.g. the layer input), each with the batch on axis 0.
        squared_norms: `squared_norms(layer, residuals, d, method) -> tuple`
            of float32 (B,) tensors, ||c_i||^2 for each of the layer's own
            trainable variables (`_compat.own_trainable_variables(layer)`),
            with keras.ops only (it runs on both backends). `method` is
            "ghost", "materialize" or "auto" (`per_example_norms.METHODS`).
    """

    forward: object
    squared_norms: object
    check: object = None  # check(layer): raises ValueError at attach time for a layer it cannot tap
    # The variables `squared_norms` returns norms of, in order; None: the layer's own trainable variables.
    variables: tuple = None


#: Layer class -> `LayerRule`: the registry. Filled below and by
#: `keras_lars.register_layer`; the error messages derive from it.
LAYER_RULES = {}


def register_layer(layer_class, forward, squared_norms):
    """Teaches the taps a layer class (it and subclasses that keep its `call`).

    Example, a layer computing y = x * scale with a (C,) scale vector:

    ```python
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=input_shape[-1:], initializer="ones")

        def call(self, x):
            return x * self.scale

    def forward(layer, tap, x):
        return tap(x * layer.scale, x)      # residuals: the input x

    def squared_norms(layer, x, d, method):
        # Example i's gradient: sum over positions of x * d, per channel.
        axes = tuple(range(1, len(x.shape) - 1))
        per_example = ops.sum(ops.cast(x, "float32") * ops.cast(d, "float32"), axis=axes)
        return (ops.sum(ops.square(per_example), axis=-1),)

    keras_lars.register_layer(Scale, forward, squared_norms)
    ```

    Registering a class again replaces its rule.

    Args:
        layer_class: a subclass of `keras.layers.Layer`.
        forward, squared_norms: as `LayerRule`'s attributes.

    Raises:
        TypeError: for a `layer_class` that is not a Layer subclass, or
            arguments that are not callable.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"`layer_class` must be a subclass of keras.layers.Layer. Received: {layer_class!r}")
    for name, fn in (("forward", forward), ("squared_norms", squared_norms)):
        if not callable(fn):
            raise TypeError(f"`{name}` must be callable. Received: {fn!r}")
    LAYER_RULES[layer_class] = LayerRule(forward, squared_norms)


def supported_layers():
    """The names of the registered layer classes."""
    return tuple(cls.__name__ for cls in LAYER_RULES)


def rule_for(layer):
    """The `LayerRule` of `layer`'s class (or of the nearest registered base
    class whose `call` it keeps), or None: unregistered, an overridden `call`,
    LoRA or quantization."""
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return None
    for cls in type(layer).__mro__:
        rule = LAYER_RULES.get(cls)
        if rule is not None:
            return rule if type(layer).call is cls.call else None
    return None


# Built-in rules: the layers' own `call`, with the tap before the bias.


def _dense_forward(layer, tap, inputs, training=None):
    x = tap(ops.matmul(inputs, layer.kernel), inputs)
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    return layer.activation(x) if layer.activation is not None else x


def _dense_squared_norms(layer, inputs, d, method):
    kernel, bias = dense_squared_norms(inputs, d, method)
    return (kernel, bias) if layer.bias is not None else (kernel,)


def _conv_forward(layer, tap, inputs):
    if layer.padding == "causal":
        # Conv1D's own causal path: pad on the left, then a valid convolution.
        x = ops.conv(
            ops.pad(inputs, _compat.causal_padding(layer)),
            layer.kernel,
            strides=list(layer.strides),
            padding="valid",
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
    else:
        x = layer.convolution_op(inputs, layer.kernel)
    return _bias_and_activation(layer, tap(x, inputs))


def _depthwise_conv(layer, inputs, kernel):
    return ops.depthwise_conv(
        inputs,
        kernel,
        strides=layer.strides,
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


def _depthwise_forward(layer, tap, inputs):
    x = _depthwise_conv(layer, inputs, layer.kernel)
    return _bias_and_activation(layer, tap(x, inputs))


def _bias_and_activation(layer, x):
    if layer.bias is not None:
        rank = len(x.shape) - 2
        channels = x.shape[-1 if layer.data_format == "channels_last" else 1]
        shape = (1,) * (rank + 1) + (channels,) if layer.data_format == "channels_last" else (1, channels) + (1,) * rank
        x = ops.add(x, ops.reshape(layer.bias, shape))
    return layer.activation(x) if layer.activation is not None else x


def _conv_squared_norms(layer, inputs, d, method, depthwise=False):
    # A depthwise convolution is one with a group per input channel.
    groups = inputs.shape[-1 if layer.data_format == "channels_last" else 1] if depthwise else layer.groups
    kernel, bias = conv_squared_norms(
        _channels_last(inputs, layer.data_format),
        _channels_last(d, layer.data_format),
        layer.kernel_size,
        layer.strides,
        layer.dilation_rate,
        layer.padding,
        groups,
        method,
    )
    return (kernel, bias) if layer.bias is not None else (kernel,)


def _depthwise_squared_norms(layer, inputs, d, method):
    return _conv_squared_norms(layer, inputs, d, method, depthwise=True)


def _channels_last(x, data_format):
    if data_format != "channels_first":
        return x
    rank = len(x.shape)
    return ops.transpose(x, (0,) + tuple(range(2, rank)) + (1,))


def _separable_forward(layer, tap, inputs):
    # Keras's ops.separable_conv is this depthwise then pointwise pair; the
    # tap keeps the depthwise output for the pointwise kernel's norms.
    depthwise = _depthwise_conv(layer, inputs, layer.depthwise_kernel)
    x = ops.conv(depthwise, layer.pointwise_kernel, strides=1, padding="valid", data_format=layer.data_format)
    return _bias_and_activation(layer, tap(x, (inputs, depthwise)))


def _separable_squared_norms(layer, residuals, d, method):
    inputs, depthwise = (_channels_last(t, layer.data_format) for t in residuals)
    d = _channels_last(d, layer.data_format)
    pointwise, bias = dense_squared_norms(depthwise, d, method)
    # dL/d(depthwise output) through the 1x1 pointwise convolution.
    d_depthwise = ops.matmul(ops.cast(d, "float32"),
                             ops.transpose(ops.cast(ops.reshape(layer.pointwise_kernel, (-1, layer.filters)), "float32")))
    depthwise_kernel, _ = conv_squared_norms(
        inputs, d_depthwise, layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding,
        inputs.shape[-1], method,
    )
    return (depthwise_kernel, pointwise, bias) if layer.bias is not None else (depthwise_kernel, pointwise)


def _transpose_forward(layer, tap, inputs):
    x = ops.conv_transpose(
        inputs,
        layer.kernel,
        strides=list(layer.strides),
        padding=layer.padding,
        output_padding=layer.output_padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )
    return _bias_and_activation(layer, tap(x, inputs))


def _transpose_squared_norms(layer, inputs, d, method):
    # y = conv_K^T(x) is the adjoint of the convolution z = conv_K(y) whose
    # kernel (kernel_size + (filters, C_in)) is the layer's: <conv_K^T(x), d>
    # = <x, conv_K(d)>, so dL/dK is that convolution's kernel gradient with
    # input d and output gradient x.
    inputs, d = _channels_last(inputs, layer.data_format), _channels_last(d, layer.data_format)
    kernel, _ = conv_squared_norms(d, inputs, layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding,
                                   1, method)
    if layer.bias is None:
        return (kernel,)
    bias = ops.sum(ops.square(ops.sum(ops.cast(d, "float32"), axis=tuple(range(1, len(d.shape) - 1)))), axis=-1)
    return kernel, bias


def _embedding_forward(layer, tap, inputs):
    if inputs.dtype != "int32" and inputs.dtype != "int64":
        inputs = ops.cast(inputs, "int32")
    outputs = tap(ops.take(layer.embeddings, inputs, axis=0), inputs)
    return ops.cast(outputs, dtype=layer.compute_dtype)


def _embedding_squared_norms(layer, ids, d, method):
    # Example i's gradient adds d_p to row ids_p for every position p, so
    # ||g_i||^2 = sum_{p,q} [ids_p == ids_q] <d_p, d_q> (ghost norm).
    positions = math.prod(ids.shape[1:])
    ids = ops.reshape(ids, (-1, positions))
    d = ops.reshape(ops.cast(d, "float32"), (-1, positions, d.shape[-1]))
    same = ops.cast(ops.equal(ids[:, :, None], ids[:, None, :]), "float32")
    return (ops.sum(same * ops.einsum("btk,bsk->bts", d, d), axis=(1, 2)),)


def _einsum_specs(layer):
    inputs, rest = layer.equation.split(",")
    kernel, outputs = rest.split("->")
    return inputs, kernel, outputs


def _einsum_dense_check(layer):
    inputs_spec, kernel_spec, outputs_spec = _einsum_specs(layer)
    if "." in layer.equation or inputs_spec[0] != outputs_spec[0] or inputs_spec[0] in kernel_spec:
        raise ValueError(
            f"Per-example norms of EinsumDense {layer.name!r} need an equation whose first input axis is "
            f"the batch, first in the output and not in the kernel, without '...'; got {layer.equation!r}. "
            "Exclude its variables from layer adaptation or pass unsupported_layers='vectorized'."
        )


def _einsum_dense_forward(layer, tap, inputs, training=None):
    x = tap(ops.einsum(layer.equation, inputs, layer.kernel), inputs)
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    return layer.activation(x) if layer.activation is not None else x


def _einsum_dense_squared_norms(layer, inputs, d, method):
    inputs_spec, kernel_spec, outputs_spec = _einsum_specs(layer)
    d = ops.cast(d, "float32")
    # The kernel gradient with the batch axis kept: B times the kernel's size.
    per_example = ops.einsum(f"{outputs_spec},{inputs_spec}->{inputs_spec[0]}{kernel_spec}", d,
                             ops.cast(inputs, "float32"))
    kernel = ops.sum(ops.square(per_example), axis=tuple(range(1, len(per_example.shape))))
    if layer.bias is None:
        return (kernel,)
    # The bias broadcasts over the output's leading axes and its own 1s.
    bias_shape = tuple(layer.bias.shape)
    lead = len(d.shape) - len(bias_shape)
    axes = tuple(range(1, lead)) + tuple(lead + j for j, n in enumerate(bias_shape) if n == 1 and d.shape[lead + j] != 1)
    summed = ops.sum(d, axis=axes) if axes else d
    return kernel, ops.sum(ops.square(summed), axis=tuple(range(1, len(summed.shape))))


for _cls in (keras.layers.Dense,):
    register_layer(_cls, _dense_forward, _dense_squared_norms)
for _cls in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
    register_layer(_cls, _conv_forward, _conv_squared_norms)
for _cls in (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D):
    register_layer(_cls, _depthwise_forward, _depthwise_squared_norms)
for _cls in (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D):
    register_layer(_cls, _separable_forward, _separable_squared_norms)
for _cls in (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose):
    register_layer(_cls, _transpose_forward, _transpose_squared_norms)
register_layer(keras.layers.Embedding, _embedding_forward, _embedding_squared_norms)
LAYER_RULES[keras.layers.EinsumDense] = LayerRule(_einsum_dense_forward, _einsum_dense_squared_norms,
                                                 _einsum_dense_check)


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
        own = [id(v) for v in (rule.variables or _compat.own_trainable_variables(layer))]
        self._rows = [own.index(id(v)) for v in variables]

    def install(self):
        layer = self.layer
        object.__setattr__(layer, "call", lambda *args, **kwargs: self.rule.forward(layer, self._tap, *args, **kwargs))

    def remove(self):
        if self.layer.__dict__.get("call") is not None:
            object.__delattr__(self.layer, "call")

    def _tap(self, z, residuals):
        return _backend.tap_identity(z, self.attachment.probe_value(self), residuals, self._emit)

    def _emit(self, residuals, d):
        residuals, d, scale = self.attachment.sub_batch(residuals, d)
        squared = self.rule.squared_norms(self.layer, residuals, d, self.attachment.method)
        return ops.stack([self.attachment.row(squared[j], scale) for j in self._rows])


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
        owners = _owners(model)
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
        shared = [f"{layer.name} ({calls[id(layer)]} calls)" for layer, _, _ in by_layer.values()
                  if calls[id(layer)] > 1]
        if shared:
            raise ValueError(
                f"Layers {shared} are called more than once per call of model {model.name!r} (shared "
                "layers); per-example norms support one call per step. Exclude their variables from layer "
                "adaptation or untie the layers."
            )
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
                self.taps.append(_LayerTap(layer, rule, tracked, self, probe))

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
        if self._holder is not None and self._holder in _compat.sub_layers(self._host):
            _compat.sub_layers(self._host).remove(self._holder)
        if self.model.__dict__.get(_ATTACHMENT) is self:
            object.__delattr__(self.model, _ATTACHMENT)
        if forget_compiled:
            _forget_compiled_functions(self.model)

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

    def row(self, squared, scale):
        """A probe row from one variable's per-example squared norms (n,):
        `[sum_i ||c_i||, sum_i ||c_i||^2, n]` scaled from the sub-batch to
        the batch, or (width n) the squared norms themselves."""
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
    calls = []  # the latest call's arguments: one call per step (shared layers are refused)

    def forward(layer, tap, *args, **kwargs):
        outputs = original_call(*args, **kwargs)
        if not args or not ops.is_tensor(args[0]) or not ops.is_tensor(outputs):
            raise ValueError(
                f"The vectorized per-example fallback needs layer {layer.name!r} "
                f"({type(layer).__name__}) to take a tensor first and return one tensor."
            )
        calls[:] = [lambda x: original_call(x, *args[1:], **kwargs)]
        return tap(outputs, (args[0], tuple(v.value for v in variables)))

    def squared_norms(layer, residuals, dy, method):
        inputs, values = residuals
        return _backend.vectorized_squared_norms(calls[0], variables, values, inputs, dy)

    return LayerRule(forward, squared_norms, variables=tuple(variables))


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
            shapes, `per_example_norms.choose_method`), "ghost" or "materialize".
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
