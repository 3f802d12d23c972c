"""Per-example gradient norms inside the ordinary train step (TensorFlow backend).

`attach_per_example_norms(model)` taps every layer that owns a variable CLARS
adapts: the layer's forward pass is unchanged except for an identity on its
pre-activation output z whose gradient function sees d = dL/dz and, with the
layer input a kept from the forward pass, computes sum_i ||c_i|| for the
layer's kernel (and bias), c_i being example i's contribution to the gradient
(`keras_lars.per_example_norms`). So the norms come out of the SAME forward
and backward pass as the gradient: Keras's own `train_step` runs unchanged, and
`CLARS.apply` collects the sums recorded during this step's backward pass.

With a loss averaged over the global batch B (Keras's default reduction; under
`tf.distribute` Keras also divides each replica's loss by the number of
replicas), c_i = grad f_i / B, so sum_i ||c_i|| = (1/B) sum_i ||grad f_i||:
each replica sums over its own examples and `CLARS` all-reduces (SUM) the sums.

BatchNorm in training mode couples the examples of a batch; d then carries the
batch statistics' cross-example terms and c_i = a_i (x) d_i is example i's
contribution to the batch gradient, the quantity hook-based per-example
methods (Opacus, BackPACK) compute; it is not the gradient of f_i evaluated on
example i alone.
"""

import itertools
import math
import threading
import weakref

import keras
from keras import ops

from keras_lars.per_example_norms import METHODS, conv_squared_norms, dense_squared_norms

UNSUPPORTED_LAYER_POLICIES = ("error", "vectorized")

# Norm sums recorded by gradient functions, per replica (tf.distribute runs each
# replica in its own thread): {replica key: {variable id: [(graph, forward call
# id, sum), ...]}}.
_tables = {}
_tables_lock = threading.Lock()
# Active attachment per model (weak: attaching never keeps a model alive).
_attachments = weakref.WeakKeyDictionary()
_call_ids = itertools.count()


def _require_tensorflow(what):
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"{what} needs the TensorFlow backend (per-example gradient norms are taken in "
            f"TensorFlow's backward pass); the Keras backend is {keras.backend.backend()!r}."
        )


def _current_graph():
    import tensorflow as tf

    return None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()


def _visible(graph, current):
    # A sum recorded in an enclosing graph (the train step) is usable inside a
    # nested one (a cond branch around `apply`, e.g. loss scaling).
    if graph is None:
        return current is None
    while current is not None:
        if current is graph:
            return True
        current = getattr(current, "outer_graph", None)
    return False


def _replica_key():
    # Sums are kept per replica, not per thread: a LossScaleOptimizer under
    # MirroredStrategy runs `CLARS.apply` in other threads (its merge_call)
    # than the backward pass that recorded them, with the same replica id.
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is not None and tf.distribute.has_strategy():
        replica = tf.get_static_value(context.replica_id_in_sync_group)
        if replica is not None:
            return (id(tf.distribute.get_strategy()), int(replica))
    return ("thread", threading.get_ident())


def _table():
    with _tables_lock:
        return _tables.setdefault(_replica_key(), {})


def _forget(variables):
    # A new forward call of a layer makes the sums of earlier ones obsolete
    # (gradients computed without an `apply`, an earlier trace).
    table = _table()
    if table:
        for variable in variables:
            table.pop(id(variable), None)


def _record(variable, call, value):
    table = _table()
    entries = [e for e in table.get(id(variable), []) if e[1] != call]
    table[id(variable)] = entries + [(_current_graph(), call, value)]


def take_norm_sums(variables):
    """Returns and forgets this step's recorded sums for each variable.

    Called by `CLARS.apply` in the thread (replica) that ran the backward pass.

    Args:
        variables: the `keras.Variable`s whose sums are needed.

    Returns:
        A list of float32 (3,) vectors, one per variable: this replica's
        `[sum_i ||c_i||, sum_i ||c_i||^2, B]` (B: its examples; with a
        sub-batch, the sums are scaled to the batch).

    Raises:
        ValueError: naming the variables that have no sum from this step's
            backward pass, or a layer whose forward pass ran more than once.
    """
    _require_tensorflow("CLARS")
    table = _table()
    current = _current_graph()
    sums, missing = [], []
    for variable in variables:
        entries = [e for e in table.pop(id(variable), []) if _visible(e[0], current)]
        if not entries:
            missing.append(variable.path)
            continue
        if len(entries) > 1:
            raise ValueError(
                f"The layer owning {variable.path!r} ran {len(entries)} times in this step's forward "
                "pass (a shared layer); per-example norms support one call per step."
            )
        sums.append(entries[0][2])
    if missing:
        shown = ", ".join(repr(p) for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"CLARS needs per-example gradient norms for {shown}, but this step's backward pass "
            "computed none. Call `keras_lars.attach_per_example_norms(model)` after "
            "`model.compile(optimizer=CLARS(...))`, and compute the gradients of a loss of that "
            "model's outputs in the same step (model.fit does)."
        )
    return sums


def put_norm_sums(variables, sums):
    """Records sums returned by `take_norm_sums` from a nested function (an
    XLA-compiled forward/backward pass) so that `CLARS.apply` in the enclosing
    train step finds them.

    Args:
        variables: the `keras.Variable`s passed to `take_norm_sums`.
        sums: the float32 (3,) vectors it returned, in the same order.
    """
    call = next(_call_ids)
    for variable, value in zip(variables, sums):
        _record(variable, call, value)


def all_reduce_sum(value):
    """Sum over the replicas of the current replica context (identity outside one)."""
    if keras.backend.backend() != "tensorflow":
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _tap(z, variables, on_gradient):
    """Identity on z whose gradient function calls `on_gradient(dL/dz, call)`;
    `call` identifies this forward call (a shared layer has several)."""
    import tensorflow as tf

    _forget(variables)
    call = next(_call_ids)

    @tf.custom_gradient
    def identity(t):
        def grad(upstream):
            on_gradient(upstream, call)
            return upstream

        return tf.identity(t), grad

    return identity(z)


def _channels_last(x, data_format):
    if data_format != "channels_first":
        return x
    rank = len(x.shape)
    return ops.transpose(x, (0,) + tuple(range(2, rank)) + (1,))


def _layer_kind(layer):
    """"dense", "conv", "depthwise", or None when the layer is not supported
    (another class, a subclass overriding `call`, LoRA or quantization)."""
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return None
    kind_by_class = [
        (keras.layers.Dense, "dense"),
        (keras.layers.Conv1D, "conv"),
        (keras.layers.Conv2D, "conv"),
        (keras.layers.Conv3D, "conv"),
        (keras.layers.DepthwiseConv1D, "depthwise"),
        (keras.layers.DepthwiseConv2D, "depthwise"),
    ]
    for cls, kind in kind_by_class:
        if isinstance(layer, cls) and type(layer).call is cls.call:
            if kind == "conv" and type(layer).convolution_op is not cls.convolution_op:
                return None
            return kind
    return None


SUPPORTED_LAYERS = ("Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D")


class _LayerTap:
    """Replaces one layer's `call` (on the instance) by the same computation
    with a tap, and turns the tapped gradient into recorded norm sums."""

    def __init__(self, layer, variables, attachment):
        self.layer = layer
        self.variables = variables
        self.attachment = attachment
        self.kind = _layer_kind(layer) or "vectorized"
        self._original_call = layer.call

    def install(self):
        calls = {
            "dense": self._dense_call,
            "conv": self._conv_call,
            "depthwise": self._depthwise_call,
            "vectorized": self._vectorized_call,
        }
        object.__setattr__(self.layer, "call", calls[self.kind])

    def remove(self):
        if self.layer.__dict__.get("call") is not None:
            object.__delattr__(self.layer, "call")

    # Forward passes: the layers' own `call`, with the tap before the bias.

    def _dense_call(self, inputs, training=None):
        layer = self.layer
        x = ops.matmul(inputs, layer.kernel)
        x = _tap(x, self.variables, lambda d, call: self._record_squared(call, *self._dense_norms(inputs, d)))
        if layer.bias is not None:
            x = ops.add(x, layer.bias)
        return layer.activation(x) if layer.activation is not None else x

    def _conv_call(self, inputs):
        layer = self.layer
        if layer.padding == "causal":
            # Conv1D's own causal path: pad on the left, then a valid convolution.
            x = ops.conv(
                ops.pad(inputs, layer._compute_causal_padding()),
                layer.kernel,
                strides=list(layer.strides),
                padding="valid",
                dilation_rate=layer.dilation_rate,
                data_format=layer.data_format,
            )
        else:
            x = layer.convolution_op(inputs, layer.kernel)
        x = _tap(x, self.variables, lambda d, call: self._record_squared(call, *self._conv_norms(inputs, d, layer.groups)))
        return self._bias_and_activation(x)

    def _depthwise_call(self, inputs):
        layer = self.layer
        x = ops.depthwise_conv(
            inputs,
            layer.kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        channels = inputs.shape[-1 if layer.data_format == "channels_last" else 1]
        x = _tap(x, self.variables, lambda d, call: self._record_squared(call, *self._conv_norms(inputs, d, channels)))
        return self._bias_and_activation(x)

    def _bias_and_activation(self, x):
        layer = self.layer
        if layer.bias is not None:
            rank = len(x.shape) - 2
            channels = x.shape[-1 if layer.data_format == "channels_last" else 1]
            shape = (1,) * (rank + 1) + (channels,) if layer.data_format == "channels_last" else (1, channels) + (1,) * rank
            x = ops.add(x, ops.reshape(layer.bias, shape))
        return layer.activation(x) if layer.activation is not None else x

    def _vectorized_call(self, *args, **kwargs):
        outputs = self._original_call(*args, **kwargs)
        if len(args) != 1 or not ops.is_tensor(args[0]) or not ops.is_tensor(outputs):
            raise ValueError(
                f"The vectorized per-example fallback needs layer {self.layer.name!r} "
                f"({type(self.layer).__name__}) to take one tensor input and return one tensor."
            )
        return _tap(outputs, self.variables, lambda dy, call: self._record_vectorized(call, args[0], kwargs, dy))

    # Norms.

    def _dense_norms(self, inputs, d):
        a, d, scale = self.attachment.sub_batch(inputs, d)
        return dense_squared_norms(a, d, self.attachment.method) + (scale,)

    def _conv_norms(self, inputs, d, groups):
        layer = self.layer
        a, d, scale = self.attachment.sub_batch(inputs, d)
        return conv_squared_norms(
            _channels_last(a, layer.data_format),
            _channels_last(d, layer.data_format),
            layer.kernel_size,
            layer.strides,
            layer.dilation_rate,
            layer.padding,
            groups,
            self.attachment.method,
        ) + (scale,)

    def _record_squared(self, call, kernel, bias, scale):
        layer = self.layer
        for variable in self.variables:
            squared = bias if layer.bias is not None and variable is layer.bias else kernel
            self._record(call, variable, squared, scale)

    def _record_vectorized(self, call, inputs, kwargs, dy):
        import tensorflow as tf

        a, dy, scale = self.attachment.sub_batch(inputs, dy)
        variables = list(self.variables)

        def one_example(example):
            a_i, dy_i = example
            with tf.GradientTape() as tape:
                y_i = self._original_call(a_i[None], **kwargs)
            grads = tape.gradient(y_i, variables, output_gradients=dy_i[None])
            return tf.stack([tf.reduce_sum(tf.square(tf.cast(g, "float32"))) for g in grads])

        squared = tf.vectorized_map(one_example, (a, dy))
        for j, variable in enumerate(variables):
            self._record(call, variable, squared[:, j], scale)

    def _record(self, call, variable, squared, scale):
        _record(variable, call, self.attachment.finish(squared, scale, variable))


class PerExampleNorms:
    """An attachment of per-example norm taps to a model's layers; see
    `attach_per_example_norms`. `detach()` restores the layers."""

    def __init__(self, model, variables, method, sub_batch_size, unsupported_layers):
        self.model_ref = weakref.ref(model)
        self.variables = list(variables)
        self.method = method
        self.sub_batch_size = sub_batch_size
        self.divide_by_loss_scale = True
        # For `per_example_squared_norms`: {variable id: (B,) squared norms of c_i}.
        self.per_example = None
        owners = _owners(model)
        by_layer, unsupported = {}, []
        for variable in self.variables:
            layer = owners.get(id(variable))
            if layer is None or (_layer_kind(layer) is None and unsupported_layers == "error"):
                unsupported.append((variable, layer))
                continue
            by_layer.setdefault(id(layer), (layer, []))[1].append(variable)
        if unsupported:
            lines = "\n".join(
                f"  {v.path!r} of layer {l.name!r} ({type(l).__name__})" if l is not None
                else f"  {v.path!r}, owned by no layer of the model"
                for v, l in unsupported
            )
            raise ValueError(
                "Per-example gradient norms are implemented for "
                f"{', '.join(SUPPORTED_LAYERS)} (without LoRA, quantization or an overridden "
                f"`call`); these adapted variables belong elsewhere:\n{lines}\n"
                "Exclude them from layer adaptation (`exclude_from_layer_adaptation=`), or pass "
                "unsupported_layers='vectorized' for exact per-example gradients of those layers by "
                "tf.vectorized_map (slow: one small backward pass per example)."
            )
        self.taps = [_LayerTap(layer, vs, self) for layer, vs in by_layer.values()]

    def install(self):
        for tap in self.taps:
            tap.install()

    def detach(self):
        """Restores the layers' own `call`; CLARS then fails at its next step."""
        for tap in self.taps:
            tap.remove()
        model = self.model_ref()
        if model is not None and _attachments.get(model) is self:
            del _attachments[model]

    def sub_batch(self, a, d):
        """The first |J| examples (per replica: ceil(|J| / replicas)) of a and
        d, and the factor (batch / |J|) that scales their sum to the batch."""
        if self.sub_batch_size is None:
            return a, d, None
        import tensorflow as tf

        count = math.ceil(self.sub_batch_size / tf.distribute.get_strategy().num_replicas_in_sync)
        batch = tf.shape(a)[0]
        scale = tf.cast(batch, "float32") / tf.cast(tf.minimum(batch, count), "float32")
        return a[:count], d[:count], scale

    def finish(self, squared, scale, variable):
        """This replica's float32 `[sum_i ||c_i||, sum_i ||c_i||^2, B]` from
        the per-example squared norms (B,) of the (sub-)batch: sums scaled from
        the sub-batch to the batch and divided by the optimizer's loss scale
        (mixed precision), which the gradients d carry."""
        squared = ops.cast(squared, "float32")
        count = ops.cast(ops.shape(squared)[0], "float32")
        sums = ops.stack([ops.sum(ops.sqrt(squared)), ops.sum(squared)])
        if scale is not None:
            sums = sums * ops.cast(scale, "float32")
            count = count * ops.cast(scale, "float32")
        model = self.model_ref()
        optimizer = getattr(model, "optimizer", None) if self.divide_by_loss_scale else None
        if optimizer is not None and (
            isinstance(optimizer, keras.optimizers.LossScaleOptimizer) or optimizer.loss_scale_factor
        ):
            loss_scale = ops.cast(optimizer.scale_loss(ops.ones((), "float32")), "float32")
            sums = sums / ops.stack([loss_scale, ops.square(loss_scale)])
        if self.per_example is not None:
            self.per_example[id(variable)] = squared
        return ops.concatenate([sums, count[None]])


def _owners(model):
    owners = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for variable in layer._trainable_variables:
            owners[id(variable)] = layer
    return owners


def _default_variables(model):
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    from keras_lars.clars import CLARS

    if isinstance(optimizer, CLARS):
        variables = model.trainable_variables
        return [v for v, adapt in zip(variables, optimizer.adapts(variables)) if adapt]
    return None


def attach_per_example_norms(model, variables=None, *, method="auto", sub_batch_size=None, unsupported_layers="error"):
    """Makes every train step of `model` compute the per-example gradient norms CLARS needs.

    The one extra line CLARS needs, after `model.compile(optimizer=CLARS(...))`
    (functional, sequential or subclassed models, `fit` or a custom loop):

    ```python
    model.compile(optimizer=keras_lars.CLARS(learning_rate=...), loss=..., metrics=...)
    keras_lars.attach_per_example_norms(model)
    model.fit(...)
    ```

    Each layer owning a variable to track gets an identity tap on its
    pre-activation output (see this module's docstring); its gradient gives,
    in the same backward pass, sum_i ||c_i|| per variable, which `CLARS.apply`
    collects. Per-example gradients are never formed for the whole model: per
    layer either B kernel-sized gradients or B (T x T) Gram matrices
    ("ghost norm"), whichever `method` picks. Attaching again replaces the
    previous attachment.

    Args:
        model: a built `keras.Model` (its variables exist).
        variables: the `keras.Variable`s to track; None (default): those the
            model's CLARS optimizer adapts (the optimizer must be set by
            `compile`; a `LossScaleOptimizer` around CLARS is fine).
        method: "auto" (default: per layer, the cheaper of the two from the
            shapes, `per_example_norms.choose_method`), "ghost" or "materialize".
        sub_batch_size: None (all examples) or an int |J| >= 1: estimate n_k
            on the first |J| examples of the global batch (ceil(|J| / replicas)
            per replica), scaled to the batch: (B / |J|) * sum_{j in J} ||c_j||.
            The paper uses |J| = 512. Caps the cost at large batch.
        unsupported_layers: "error" (default) or "vectorized": for layers
            other than `SUPPORTED_LAYERS`, exact per-example gradients of the
            layer by `tf.vectorized_map` of one small backward pass per
            example (slow; exact when the layer treats examples independently,
            i.e. not BatchNormalization in training mode).

    Returns:
        A `PerExampleNorms`; its `detach()` restores the layers.

    Raises:
        RuntimeError: on a Keras backend other than TensorFlow.
        ValueError: for an unbuilt model, no variables to track, a bad
            `method`, `sub_batch_size` or `unsupported_layers`, or (with
            "error") tracked variables of unsupported layers, all named.
    """
    _require_tensorflow("attach_per_example_norms")
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
    previous = _attachments.get(model)
    if previous is not None:
        previous.detach()
    attachment = PerExampleNorms(model, variables, method, sub_batch_size, unsupported_layers)
    attachment.install()
    _attachments[model] = attachment
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
        As `attach_per_example_norms`.
    """
    sums, _, gradients, loss_value = _one_pass(model, x, y, loss, variables, sample_weight, training, options)
    return [total[0] for total in sums], gradients, loss_value


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
        As `attach_per_example_norms`.
    """
    sums, squared, gradients, loss_value = _one_pass(
        model, x, y, loss, variables, sample_weight, training, options, keep_per_example=True
    )
    # c_i = grad f_i / B for a loss averaged over the batch of B examples.
    return [sq * ops.square(total[2]) for sq, total in zip(squared, sums)], gradients, loss_value


def _one_pass(model, x, y, loss, variables, sample_weight, training, options, keep_per_example=False):
    """One forward and backward pass with a temporary attachment; returns
    (each variable's (3,) sums, its (B,) squared norms of c_i or None, the
    gradients, the loss). A previous attachment is restored afterwards."""
    _require_tensorflow("per-example gradient norms")
    import tensorflow as tf

    if variables is None:
        variables = _default_variables(model)
        if variables is None:
            variables = [v for v in model.trainable_variables if len(v.shape) >= 2]
    previous = _attachments.get(model)
    attachment = attach_per_example_norms(model, variables, **options)
    attachment.divide_by_loss_scale = False
    attachment.per_example = {} if keep_per_example else None
    try:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=training)
            loss_value = loss(y, y_pred, sample_weight=sample_weight)
        gradients = tape.gradient(loss_value, variables)
        sums = take_norm_sums(variables)
        squared = [attachment.per_example[id(v)] for v in variables] if keep_per_example else None
    finally:
        attachment.detach()
        if previous is not None:
            previous.install()
            _attachments[model] = previous
    return sums, squared, gradients, loss_value
