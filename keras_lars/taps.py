"""The names of `keras_lars.per_example` under their earlier module name."""

from keras_lars.per_example import (  # noqa: F401
    LAYER_RULES,
    UNSUPPORTED_LAYER_POLICIES,
    LayerRule,
    PerExampleNorms,
    attach_per_example_norms,
    attached,
    is_probe,
    per_example_gradient_norms,
    per_example_squared_norms,
    register_layer,
    rule_for,
    supported_layers,
)
