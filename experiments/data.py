"""Fashion-MNIST for the experiments: in memory through the real TFDS
builder, the training images split into training and validation, as
`tf.data` pipelines whose order depends only on the run's seed."""

import numpy as np
import tensorflow as tf

TRAIN_EXAMPLES = 60000
NUM_CLASSES = 10
# Fashion-MNIST's mean and std (as the trainer's preprocessing).
MEAN, STD = 0.2860, 0.3530
# Precise BatchNorm statistics (`experiments.precise_bn`) are computed over the
# first this many training images (the same for every run).
PRECISE_BN_EXAMPLES = 10000

_DATA = {}


def fashion_mnist():
    """Fashion-MNIST through the real TFDS builder (prepared offline from
    Debian's files when present), as normalised float32 NumPy arrays:
    ((60000, 28, 28, 1), (60000,) int32, (10000, 28, 28, 1), (10000,) int32)."""
    if not _DATA:
        from keras_lars.train import data

        builder = data.get_builder("fashion_mnist")
        for split in ("train", "test"):
            batch = tfds_as_numpy(builder, split)
            images = (batch["image"].astype(np.float32) / 255.0 - MEAN) / STD
            _DATA[split] = (images, batch["label"].astype(np.int32))
    return _DATA["train"] + _DATA["test"]


def tfds_as_numpy(builder, split):
    import tensorflow_datasets as tfds

    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))


def _images(x, image_size):
    """Resizes to image_size (bilinear) and repeats to 3 channels for resnet50."""
    if image_size == 28:
        return x
    return tf.image.grayscale_to_rgb(tf.image.resize(x, (image_size, image_size)))


def datasets(spec):
    """(train, validation, test) `tf.data.Dataset`s (validation None when
    `spec.validation_examples` is 0): train is the first
    `spec.train_examples` training images, validation the rest; the train
    order depends only on `spec.seed`, so every method sees the same
    batches."""
    x, y, x_test, y_test = fashion_mnist()
    n = spec.train_examples
    train = tf.data.Dataset.from_tensor_slices((x[:n], y[:n]))
    train = train.shuffle(n, seed=spec.seed, reshuffle_each_iteration=True)
    train = train.batch(spec.batch_size, drop_remainder=True)
    test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(1000)
    validation = tf.data.Dataset.from_tensor_slices((x[n:], y[n:])).batch(1000) if n < len(x) else None
    if spec.max_steps:  # the quick mode: a few train steps, one test (and validation) batch
        train, test = train.take(spec.max_steps), test.take(1)
        validation = validation and validation.take(1)
    if spec.image_size != 28:
        resize = lambda a, b: (_images(a, spec.image_size), b)  # noqa: E731
        train, test = train.map(resize), test.map(resize)
        validation = validation and validation.map(resize)
    return train.prefetch(2), validation and validation.prefetch(2), test.prefetch(2)


def precise_bn_images(spec):
    """The training images precise BatchNorm statistics are computed over:
    the first `PRECISE_BN_EXAMPLES` (1,000 in the quick mode), as float32
    NumPy."""
    x = fashion_mnist()[0]
    images = x[:1000 if spec.max_steps else PRECISE_BN_EXAMPLES]
    return images if spec.image_size == 28 else _images(images, spec.image_size).numpy()
