"""Layer-wise adaptive large-batch optimizers for Keras 3."""

from keras_lars import schedules
from keras_lars.exclusions import ExclusionRules, is_rank_at_most_1
from keras_lars.lars import LARS

__version__ = "0.1.0"
__all__ = ["LARS", "ExclusionRules", "is_rank_at_most_1", "schedules"]
