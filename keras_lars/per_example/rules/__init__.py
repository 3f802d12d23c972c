"""The built-in rules, one module per layer family; importing this package
registers them (in this order, which `supported_layers()` keeps), and
KerasHub's when `rule_for` first meets a KerasHub layer (so that importing
keras_lars never imports keras_hub)."""

import importlib

from keras_lars.per_example import registry

from keras_lars.per_example.rules import dense  # noqa: F401, I001
from keras_lars.per_example.rules import conv  # noqa: F401
from keras_lars.per_example.rules import embedding  # noqa: F401
from keras_lars.per_example.rules import einsum_dense  # noqa: F401

registry.register_loader("keras_hub.", lambda: importlib.import_module("keras_lars.per_example.rules.keras_hub"))
