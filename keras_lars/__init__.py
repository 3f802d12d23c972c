"""Layer-wise adaptive large-batch optimizers for Keras 3."""

from keras_lars import layer_statistics, per_example, schedules  # noqa: F401
from keras_lars.clars import CLARS
from keras_lars.exclusions import ExclusionRules, is_rank_at_most_1
from keras_lars.lars import LARS
from keras_lars.layer_statistics import LayerStatisticsLogger
from keras_lars.per_example import (
    PerExampleNorms,
    attach_per_example_norms,
    per_example_gradient_norms,
    per_example_squared_norms,
    register_layer,
    supported_layers,
)

__version__ = "0.1.0"
__all__ = [
    "CLARS",
    "ExclusionRules",
    "LARS",
    "LayerStatisticsLogger",
    "PerExampleNorms",
    "attach_per_example_norms",
    "is_rank_at_most_1",
    "layer_statistics",
    "per_example",
    "per_example_gradient_norms",
    "per_example_squared_norms",
    "register_layer",
    "supported_layers",
    "schedules",
]
