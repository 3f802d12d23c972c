"""ResNet-50 v1.5 (MLPerf) and the CIFAR-style ResNet of He et al. (2016)."""

import keras
from keras import layers

# MLPerf ResNet-50 reference: BN momentum 0.9, epsilon 1e-5. With few steps per
# epoch at large batch, Keras's default 0.99 leaves moving statistics stale.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def _conv(filters, kernel_size, strides=1, padding="same", name=None):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _bn(name=None, zero_gamma=False):
    return layers.BatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )


def _bottleneck(x, filters, strides, projection, zero_init_last_bn, name):
    shortcut = x
    if projection:
        shortcut = _conv(4 * filters, 1, strides, name=f"{name}_proj_conv")(x)
        shortcut = _bn(f"{name}_proj_bn")(shortcut)
    y = _conv(filters, 1, name=f"{name}_conv1")(x)
    y = layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1")(y))
    # v1.5: the stride sits on the 3x3 convolution, not the first 1x1.
    y = _conv(filters, 3, strides, name=f"{name}_conv2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(_bn(f"{name}_bn2")(y))
    y = _conv(4 * filters, 1, name=f"{name}_conv3")(y)
    y = _bn(f"{name}_bn3", zero_gamma=zero_init_last_bn)(y)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def _head(x, num_classes, name):
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        name="logits",
    )(x)
    # Softmax in float32 even under a mixed-precision policy.
    return layers.Activation("softmax", dtype="float32", name="probs")(x)


def resnet50_v15(num_classes=1000, input_shape=(224, 224, 3), zero_init_last_bn=False):
    """ResNet-50 v1.5 as in the MLPerf reference (25,557,032 parameters at 1000 classes).

    Stem: ZeroPad(3), 7x7/2 valid conv, BN, ReLU, 3x3/2 max-pool; stages of
    [3, 4, 6, 3] bottlenecks with 64/128/256/512 filters (x4 out), stride 2 on
    the 3x3 conv of each stage's first block; convs without bias, he_normal;
    head Dense(num_classes) with N(0, 0.01) init and a float32 softmax.

    Args:
        num_classes: int, output classes.
        input_shape: (height, width, channels), channels-last.
        zero_init_last_bn: init each block's last BN gamma to 0 (Goyal et al.).
    """
    inputs = keras.Input(input_shape, name="images")
    x = layers.ZeroPadding2D(3, name="stem_pad")(inputs)
    x = _conv(64, 7, 2, padding="valid", name="stem_conv")(x)
    x = layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
    x = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    for stage, (blocks, filters) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            x = _bottleneck(
                x,
                filters,
                strides=2 if block == 0 and stage > 0 else 1,
                projection=block == 0,
                zero_init_last_bn=zero_init_last_bn,
                name=f"stage{stage + 1}_block{block + 1}",
            )
    return keras.Model(inputs, _head(x, num_classes, "resnet50"), name="resnet50_v1_5")


@keras.saving.register_keras_serializable(package="keras_lars_train")
class ZeroPadShortcut(layers.Layer):
    """He et al.'s option-A shortcut: subsample by `strides`, then zero-pad the
    channels up to `filters`. It has no parameters."""

    def __init__(self, filters, strides, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides

    def call(self, x):
        x = x[:, :: self.strides, :: self.strides, :]
        extra = self.filters - x.shape[-1]
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        down = lambda n: None if n is None else -(-n // self.strides)  # noqa: E731
        return (b, down(h), down(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


def _basic_block(x, filters, strides, name):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = ZeroPadShortcut(filters, strides, name=f"{name}_shortcut")(x)
    y = _conv(filters, 3, strides, name=f"{name}_conv1")(x)
    y = layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1")(y))
    y = _conv(filters, 3, name=f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def cifar_resnet(depth, num_classes=10, input_shape=(32, 32, 3)):
    """The CIFAR ResNet of He et al. 2016 (Sec. 4.2): depth = 6n + 2.

    3x3 conv (16) stem, three stages of n basic blocks with 16/32/64 filters
    (stride 2 entering stages 2 and 3, parameter-free option-A shortcuts),
    global average pooling, Dense. ResNet-8/20/56 have n = 1/3/9 and
    75,290 / 269,722 / 853,018 trainable parameters at 10 classes (the
    paper's 0.27M and 0.85M).

    Args:
        depth: int in `CIFAR_DEPTHS` (any 6n + 2 >= 8 works).
        num_classes: int.
        input_shape: (height, width, channels), channels-last.

    Raises:
        ValueError: if depth is not 6n + 2 with n >= 1.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 >= 8 (8, 20, 56, ...). Received: {depth}")
    n = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="images")
    x = _conv(16, 3, name="stem_conv")(inputs)
    x = layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(n):
            x = _basic_block(
                x,
                filters,
                strides=2 if block == 0 and stage > 0 else 1,
                name=f"stage{stage + 1}_block{block + 1}",
            )
    return keras.Model(inputs, _head(x, num_classes, "cifar"), name=f"resnet{depth}")


MODEL_NAMES = ("resnet50",) + tuple(f"resnet{d}" for d in CIFAR_DEPTHS)


def check_model_name(name):
    """Raises ValueError unless `name` is one of `MODEL_NAMES`."""
    if name not in MODEL_NAMES:
        raise ValueError(
            f"Unknown model {name!r}. Accepted: 'resnet50' (v1.5, ImageNet) or "
            + ", ".join(f"'{n}'" for n in MODEL_NAMES[1:])
            + " (CIFAR-style, small images)."
        )


def build_model(name, num_classes, input_shape, zero_init_last_bn=False):
    """`name`: one of `MODEL_NAMES`: "resnet50" or "resnetN" with N in
    `CIFAR_DEPTHS` (e.g. "resnet20"). `zero_init_last_bn` applies to resnet50
    (see `resnet50_v15`).

    Raises:
        ValueError: for an unknown name.
    """
    check_model_name(name)
    if name == "resnet50":
        return resnet50_v15(num_classes, input_shape, zero_init_last_bn)
    return cifar_resnet(int(name[len("resnet"):]), num_classes, input_shape)
