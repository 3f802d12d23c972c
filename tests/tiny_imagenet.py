"""A tiny ImageNet in the real ILSVRC2012 layout, for the real TFDS builder.

ILSVRC2012_img_train.tar holds one tar per class (nXXXXXXXX.tar of
nXXXXXXXX_i.JPEG files); ILSVRC2012_img_val.tar holds ILSVRC2012_val_%08d.JPEG
files whose labels TFDS takes from its own validation label file (so the
classes are those of the first validation images). Images are real JPEGs of
varied sizes, a class-specific colour plus noise, so a small net can learn
them.
"""

import colorsys
import io
import os
import tarfile

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def validation_labels(count):
    path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
    with open(os.fspath(path)) as f:
        return f.read().split()[:count]


def _jpeg(rng, class_index, num_classes):
    height, width = rng.integers(40, 90, size=2)
    rgb = np.array(colorsys.hsv_to_rgb(class_index / num_classes, 0.9, 0.9)) * 255
    image = rgb + rng.normal(0, 20, size=(height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return tf.io.encode_jpeg(image, quality=90).numpy()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tiny_imagenet(manual_dir, val_images=12, train_per_class=16, seed=0):
    """Writes the two tars into `manual_dir`. Returns (synsets, train count, val count)."""
    rng = np.random.default_rng(seed)
    labels = validation_labels(val_images)
    synsets = sorted(set(labels))
    index = {s: i for i, s in enumerate(synsets)}
    os.makedirs(manual_dir, exist_ok=True)
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train:
        for synset in synsets:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as class_tar:
                for i in range(train_per_class):
                    _add(class_tar, f"{synset}_{i}.JPEG", _jpeg(rng, index[synset], len(synsets)))
            _add(train, f"{synset}.tar", buffer.getvalue())
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val:
        for i, synset in enumerate(labels):
            _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(rng, index[synset], len(synsets)))
    return synsets, len(synsets) * train_per_class, len(labels)
