"""Per-example image preprocessing: the MLPerf ResNet reference's for ImageNet,
mean/std normalisation for small datasets. Random ops are stateless, seeded
per example, so an epoch's images do not depend on where a run resumed."""

import tensorflow as tf

# MLPerf reference: subtract per-channel means of 0..255 pixels, no std division.
IMAGENET_CHANNEL_MEANS = (123.68, 116.78, 103.94)
# Reference crop: area in [0.05, 1] of the image, aspect ratio in [3/4, 4/3], 100 attempts.
CROP_AREA_RANGE = (0.05, 1.0)
CROP_ASPECT_RATIO_RANGE = (0.75, 1.33)
CROP_MAX_ATTEMPTS = 100
# Eval: resize the shorter side to 256 and crop the central 224 (scaled with --image-size).
EVAL_CROP_FRACTION = 224 / 256
# Per-channel mean and standard deviation of pixel values in [0, 1].
NORMALIZATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def imagenet_train(jpeg_bytes, seed, image_size):
    """Reference train augmentation with a fused decode-and-crop.

    Args:
        jpeg_bytes: scalar tf.string, an encoded JPEG.
        seed: int32/int64 tensor of shape (2,), this example's stateless seed.
        image_size: int, output height and width (224 in MLPerf).

    Returns:
        float32 (image_size, image_size, 3), channel means subtracted.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.image.extract_jpeg_shape(jpeg_bytes)
    # No bounding boxes: the whole image is the box (as the reference).
    whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=(1, 1, 4))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=whole,
        seed=crop_seed,
        min_object_covered=0.1,
        aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
        area_range=CROP_AREA_RANGE,
        max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    window = tf.stack([offset_y, offset_x, height, width])
    image = tf.image.decode_and_crop_jpeg(jpeg_bytes, window, channels=3)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
    return _subtract_means(image)


def imagenet_eval(jpeg_bytes, image_size):
    """Reference eval: decode, resize the shorter side to image_size * 256/224
    (aspect kept, bilinear), central crop image_size x image_size.

    Returns:
        float32 (image_size, image_size, 3), channel means subtracted.
    """
    image = tf.image.decode_jpeg(jpeg_bytes, channels=3)
    resize_min = round(image_size / EVAL_CROP_FRACTION)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_min / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_shape, method="bilinear")
    top = (new_shape[0] - image_size) // 2
    left = (new_shape[1] - image_size) // 2
    image = tf.slice(image, [top, left, 0], [image_size, image_size, 3])
    return _subtract_means(image)


def _subtract_means(image):
    image = tf.cast(image, tf.float32) - tf.constant(IMAGENET_CHANNEL_MEANS, tf.float32)
    return tf.ensure_shape(image, [None, None, 3])


def small_image(dataset_name, image, seed, image_size, training):
    """Scales [0, 255] pixels to [0, 1], normalises by the dataset's mean and
    std, resizes to `image_size` if given, flips at random when training."""
    mean, std = NORMALIZATION.get(dataset_name, ((0.5,), (0.5,)))
    image = tf.cast(image, tf.float32) / 255.0
    if image_size:
        image = tf.image.resize(image, (image_size, image_size))
    if training:
        image = tf.image.stateless_random_flip_left_right(image, seed)
    return (image - mean) / std


def train_example(dataset_name, example, seed, image_size):
    """A TFDS train example as (image float32 (H, W, C), label int32): the
    MLPerf reference's train preprocessing for "imagenet2012" (undecoded
    JPEG bytes), `small_image` with a random flip otherwise. `seed`: int64
    (2,), the example's stateless seed."""
    if dataset_name == "imagenet2012":
        image = imagenet_train(example["image"], seed, image_size)
    else:
        image = small_image(dataset_name, example["image"], seed, image_size, True)
    return image, tf.cast(example["label"], tf.int32)


def eval_example(dataset_name, example, image_size):
    """A TFDS eval example as (image float32 (H, W, C), label int32, weight
    float32 1.0); padding examples have weight 0."""
    if dataset_name == "imagenet2012":
        image = imagenet_eval(example["image"], image_size)
    else:
        image = small_image(dataset_name, example["image"], None, image_size, False)
    return image, tf.cast(example["label"], tf.int32), tf.constant(1.0)
