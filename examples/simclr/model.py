"""The encoder, the projection head, the SimCLR model and the NT-Xent loss."""

import keras
from keras import layers, ops

from keras_lars.train import models as train_models

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel mean and std


def encoder(name="resnet8", input_shape=(28, 28, 1)):
    """The trainer's CIFAR ResNet (`name`: "resnet8", "resnet20", ...) up to
    its global average pooling: images (batch, 28, 28, 1) float32 in [0, 1]
    -> features (batch, 64)."""
    resnet = train_models.build_model(name, 10, input_shape)
    features = resnet.get_layer("avg_pool").output
    inputs = keras.Input(input_shape, name="images")
    normalized = layers.Rescaling(1 / STD, offset=-MEAN / STD, name="normalize")(inputs)
    return keras.Model(inputs, keras.Model(resnet.input, features, name=f"{name}_trunk")(normalized),
                       name=f"{name}_encoder")


def projection_head(hidden=256, output=64):
    """SimCLR's 2-layer MLP head g(h) = W2 ReLU(BN(W1 h)) (Chen et al. 2020, Sec. 2.1)."""
    return keras.Sequential(
        [layers.Dense(hidden, use_bias=False, name="proj_fc1"), layers.BatchNormalization(name="proj_bn1"),
         layers.ReLU(name="proj_relu1"), layers.Dense(output, name="proj_fc2")],
        name="projection_head",
    )


class SimCLR(keras.Model):
    """Maps a batch of N images to the 2N projections of their two views:
    rows i and N + i are the views of image i. Train with `NTXent` and
    `fit(images, zeros)` (the labels are not read)."""

    def __init__(self, encoder, head, views, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.head, self.views = encoder, head, views

    def call(self, images, training=False):
        pair = ops.concatenate([self.views(images, training=True), self.views(images, training=True)], axis=0)
        return self.head(self.encoder(pair, training=training), training=training)


class NTXent(keras.losses.Loss):
    """The normalized temperature-scaled cross entropy (Chen et al. 2020,
    Eq. 1), averaged over the 2N views: for view i with positive j (the
    other view of its image), -log(exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)),
    s the cosine similarity of the projections.

    Args:
        temperature: float > 0, tau (SimCLR: 0.1-0.5; 0.5 in its CIFAR-10 runs).

    `y_pred`: (2N, d) projections as `SimCLR` returns them; `y_true` is ignored.
    """

    def __init__(self, temperature=0.5, name="nt_xent", **kwargs):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: {temperature!r}")
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        z = ops.cast(y_pred, "float32")  # float32 under a mixed policy: exp of 1/tau-scaled logits
        z = z / ops.sqrt(ops.maximum(ops.sum(z * z, axis=1, keepdims=True), 1e-12))
        n2 = ops.shape(z)[0]
        logits = ops.matmul(z, ops.transpose(z)) / self.temperature
        logits = ops.where(ops.eye(n2, dtype="bool"), -1e9, logits)  # a view is not its own negative
        half = n2 // 2
        positives = ops.concatenate([ops.arange(half) + half, ops.arange(half)], axis=0)
        return keras.losses.sparse_categorical_crossentropy(positives, logits, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
