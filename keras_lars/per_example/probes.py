"""Where an attachment's probe variables live: `Probes`, a variable-only
layer in the sub-layers of the model's last layer (`last_layer`)."""

import keras

from keras_lars import _compat, _probes


class Probes(keras.layers.Layer):
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


def last_layer(model):
    """The layer whose sub-layers come last in `model.variables` and are not
    saved: the last top-level layer, entering nested models."""
    layer = model
    while isinstance(layer, keras.Model):
        if not _compat.sub_layers(layer):
            raise ValueError(f"Model {layer.name!r} has no layers to tap.")
        layer = _compat.sub_layers(layer)[-1]
    return layer
