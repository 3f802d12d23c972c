"""The built-in rules, one module per layer family; importing this package
registers them (in this order, which `supported_layers()` keeps)."""

from keras_lars.per_example.rules import dense  # noqa: F401, I001
from keras_lars.per_example.rules import conv  # noqa: F401
from keras_lars.per_example.rules import embedding  # noqa: F401
from keras_lars.per_example.rules import einsum_dense  # noqa: F401
