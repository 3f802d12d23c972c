"""The experiments' networks: the MLPs and CNNs of the batch-scaling claims,
the CLARS paper's sigmoid nets, and the trainer's ResNets."""

import keras

from experiments.data import NUM_CLASSES
from keras_lars.train import models as train_models

MODELS = ("mlp3", "mlp3_nobn", "cnn3", "cnn3_nobn", "resnet8", "resnet50", "fcn5", "cnn5")
BATCH_NORM_MODELS = ("mlp3", "cnn3")  # whose BatchNorm momentum a spec sets (the ResNets have the trainer's)


def build_model(name, image_size=28, batch_norm_momentum=0.99):
    """A model of `MODELS`, ending in a float32 softmax (as the trainer's);
    mlp3's and cnn3's BatchNorm layers use `batch_norm_momentum`:

    - resnet8, resnet50: the trainer's CIFAR ResNet-8 and ResNet-50 v1.5.
    - mlp3: 784-512-256-128-10 with BatchNorm and ReLU (bias-free hidden
      layers): the batch-scaling model, ~50x cheaper per image than ResNet-8.
    - mlp3_nobn: the same MLP without BatchNorm (hidden layers with biases,
      ReLU): the no-BatchNorm regime (the LARS paper's AlexNet against
      AlexNet-BN).
    - cnn3_nobn: the LARS paper's AlexNet in Fashion-MNIST's size: three
      ReLU convolutions with biases (5x5/8, 3x3/16, 3x3/32), each followed
      by 2x2 max pooling, and a dense head (64, ReLU; 10).
    - cnn3: the same network with BatchNorm after every convolution and the
      hidden dense layer (those bias-free): AlexNet-BN's role.
    - fcn5, cnn5: the CLARS paper's 5-layer sigmoid nets of Fig. 2 (the paper
      gives no widths): fcn5 784-512-256-128-64-10; cnn5 three 3x3 convs
      (16/32/64, each followed by 2x2 max pooling) and two dense layers (128, 10).
    """
    if name in ("resnet8", "resnet50"):
        channels = 3 if name == "resnet50" else 1
        return train_models.build_model(name, NUM_CLASSES, (image_size, image_size, channels))
    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 1), name="images")
    if name in ("cnn3", "cnn3_nobn"):
        return _cnn3(inputs, batch_norm_momentum if name == "cnn3" else None)
    x = layers.Flatten(name="flatten")(inputs) if name != "cnn5" else inputs
    if name == "mlp3":
        for i, width in enumerate((512, 256, 128)):
            x = layers.Dense(width, use_bias=False, name=f"fc{i + 1}")(x)
            x = layers.BatchNormalization(momentum=batch_norm_momentum, name=f"bn{i + 1}")(x)
            x = layers.ReLU(name=f"relu{i + 1}")(x)
    elif name == "mlp3_nobn":
        for i, width in enumerate((512, 256, 128)):
            x = layers.Dense(width, activation="relu", name=f"fc{i + 1}")(x)
    elif name == "fcn5":
        for i, width in enumerate((512, 256, 128, 64)):
            x = layers.Dense(width, activation="sigmoid", name=f"fc{i + 1}")(x)
    else:
        for i, filters in enumerate((16, 32, 64)):
            x = layers.Conv2D(filters, 3, padding="same", activation="sigmoid", name=f"conv{i + 1}")(x)
            x = layers.MaxPooling2D(name=f"pool{i + 1}")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(128, activation="sigmoid", name="fc4")(x)
    x = layers.Dense(NUM_CLASSES, name=f"fc{4 if name.startswith('mlp3') else 5}")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


CNN3_CONVS = ((8, 5), (16, 3), (32, 3))  # (filters, kernel size) of cnn3's convolutions
CNN3_DENSE = 64


def _cnn3(inputs, batch_norm_momentum):
    """cnn3 with BatchNorm of that momentum, or cnn3_nobn when it is None."""
    layers = keras.layers
    batch_norm = batch_norm_momentum is not None

    def block(x, layer, index):
        x = layer(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=batch_norm_momentum, name=f"bn{index}")(x)
        return layers.ReLU(name=f"relu{index}")(x)

    x = inputs
    for i, (filters, size) in enumerate(CNN3_CONVS):
        x = block(x, layers.Conv2D(filters, size, padding="same", use_bias=not batch_norm, name=f"conv{i + 1}"), i + 1)
        x = layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = block(x, layers.Dense(CNN3_DENSE, use_bias=not batch_norm, name="fc4"), 4)
    x = layers.Dense(NUM_CLASSES, name="fc5")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="cnn3" if batch_norm else "cnn3_nobn")
