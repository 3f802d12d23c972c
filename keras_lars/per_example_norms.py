"""The norm kernels, `keras_lars.per_example.kernels`, under their earlier
module name."""

from keras_lars.per_example.kernels import METHODS, choose_method, conv_squared_norms, dense_squared_norms  # noqa: F401
