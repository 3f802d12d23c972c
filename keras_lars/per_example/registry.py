"""The registry of how to tap each layer class: `LayerRule`s keyed by class,
filled by the rule modules (`keras_lars/per_example/rules/`) with the `rule`
decorator and by users with `keras_lars.register_layer`."""

import dataclasses

import keras

from keras_lars import _compat

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
            of float32 (B,) tensors, ||c_i||^2 for each of the rule's
            variables (`variables` below; None for one this call does not
            touch), with keras.ops only (it runs on every backend). `method` is
            "ghost", "materialize" or "auto" (`kernels.METHODS`).
        check: None, or `check(layer)`, which raises ValueError at attach
            time for a layer of the class the rule cannot tap.
        variables: None (the layer's own trainable variables), or the
            variables `squared_norms` returns norms of, in order: a tuple,
            or `variables(layer) -> list`. A rule naming its sub-layers'
            variables claims them: their own layers are then not tapped.
    """

    forward: object
    squared_norms: object
    check: object = None
    variables: tuple = None


#: Layer class -> `LayerRule`: the registry. Filled by `rules/` and by
#: `keras_lars.register_layer`; the error messages derive from it.
LAYER_RULES = {}
# Module prefix -> a function registering the rules of that package's layers,
# called once, the first time `rule_for` meets one (`register_loader`).
_LOADERS = {}


def register_loader(module_prefix, loader):
    """Defers registering the rules of a package's layers (one whose import
    is heavy, or optional) until `rule_for` first meets a layer class whose
    module starts with `module_prefix`; then calls `loader()` once."""
    _LOADERS[module_prefix] = loader


def register_layer(layer_class, forward, squared_norms, check=None):
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
        forward, squared_norms, check: as `LayerRule`'s attributes.

    Raises:
        TypeError: for a `layer_class` that is not a Layer subclass, or
            arguments that are not callable.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"`layer_class` must be a subclass of keras.layers.Layer. Received: {layer_class!r}")
    for name, fn in (("forward", forward), ("squared_norms", squared_norms), ("check", check)):
        if not callable(fn) and not (name == "check" and fn is None):
            raise TypeError(f"`{name}` must be callable. Received: {fn!r}")
    LAYER_RULES[layer_class] = LayerRule(forward, squared_norms, check)


def rule(*layer_classes, forward, check=None, variables=None):
    """A decorator registering the `squared_norms` function it decorates,
    with `forward` (and `check`, `variables`: as `LayerRule`'s), for each of
    `layer_classes`: the rule modules' form of `register_layer`.

    ```python
    @rule(keras.layers.Dense, forward=dense_forward)
    def dense_squared_norms(layer, inputs, d, method):
        ...
    ```
    """

    def register(squared_norms):
        for layer_class in layer_classes:
            register_layer(layer_class, forward, squared_norms, check)
            if variables is not None:
                LAYER_RULES[layer_class] = LayerRule(forward, squared_norms, check, variables)
        return squared_norms

    return register


def rule_variables(rule, layer):
    """The variables `rule.squared_norms` returns norms of for `layer`, in order."""
    if rule.variables is None:
        return _compat.own_trainable_variables(layer)
    return list(rule.variables(layer) if callable(rule.variables) else rule.variables)


def supported_layers():
    """The names of the registered layer classes."""
    return tuple(cls.__name__ for cls in LAYER_RULES)


def rule_for(layer):
    """The `LayerRule` of `layer`'s class (or of the nearest registered base
    class whose `call` it keeps), or None: unregistered, an overridden `call`,
    LoRA or quantization."""
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return None
    module = type(layer).__module__
    for prefix in [p for p in _LOADERS if module.startswith(p)]:
        _LOADERS.pop(prefix)()
    for cls in type(layer).__mro__:
        rule = LAYER_RULES.get(cls)
        if rule is not None:
            return rule if type(layer).call is cls.call else None
    return None
