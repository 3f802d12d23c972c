"""The linear probe: a softmax classifier trained on frozen features, the
standard evaluation of a self-supervised encoder (Chen et al. 2020, Sec. 4)."""

import keras
import numpy as np


def features(encoder, images, batch_size=1000):
    """The encoder's features of `images` (N, 28, 28, 1) float32 in [0, 1], in
    inference mode, as float32 NumPy (N, d); `encoder` None gives the raw
    pixels flattened (the raw-pixel baseline)."""
    if encoder is None:
        return images.reshape(len(images), -1).astype("float32")
    return np.asarray(encoder.predict(images, batch_size=batch_size, verbose=0), "float32")


def linear_probe(train_features, train_labels, test_features, test_labels, epochs=30, batch_size=512,
                 learning_rate=1e-3, seed=0):
    """Trains a Dense softmax on standardized features (Adam, `epochs` passes)
    and returns its test top-1 (float). Labels: int (N,)."""
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    keras.utils.set_random_seed(seed)
    probe = keras.Sequential([keras.Input(train_features.shape[1:]), keras.layers.Dense(10)], name="linear_probe")
    probe.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    probe.fit((train_features - mean) / std, train_labels, epochs=epochs, batch_size=batch_size, verbose=0)
    _, top1 = probe.evaluate((test_features - mean) / std, test_labels, batch_size=1000, verbose=0)
    return float(top1)
