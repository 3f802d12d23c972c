"""SimCLR-style pretraining of a small ResNet on Fashion-MNIST, then a
linear probe: `python -m examples.simclr --help`."""

import argparse
import gzip
import json
import os
import time

import keras
import numpy as np

from examples.simclr import model as simclr_model
from examples.simclr import probe, recipes, views
from keras_lars.train import optimizers

OPTIMIZERS = ("lars", "sgd", "adamw")


def load_fashion_mnist():
    """(x_train, y_train, x_test, y_test): images (N, 28, 28, 1) float32 in
    [0, 1], labels int32 (N,): through the real TFDS builder where TensorFlow
    is installed, else from Debian's `dataset-fashion-mnist` files, else
    Keras's download."""
    try:
        from experiments import data
    except ImportError:  # no TensorFlow (a JAX or PyTorch install)
        return _idx_files(DEBIAN_FASHION_MNIST) if os.path.isdir(DEBIAN_FASHION_MNIST) else _keras_download()
    x, y, x_test, y_test = data.fashion_mnist()
    scale = lambda a: (a * data.STD + data.MEAN).astype("float32")  # noqa: E731  back to [0, 1]
    return scale(x), y, scale(x_test), y_test


DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _idx_files(directory):
    def read(name, offset):
        with gzip.open(os.path.join(directory, name)) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    images = lambda name: (read(name, 16).reshape(-1, 28, 28, 1) / 255.0).astype("float32")  # noqa: E731
    return (images("train-images-idx3-ubyte.gz"), read("train-labels-idx1-ubyte.gz", 8).astype("int32"),
            images("t10k-images-idx3-ubyte.gz"), read("t10k-labels-idx1-ubyte.gz", 8).astype("int32"))


def _keras_download():
    (x, y), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    prep = lambda a: (a[..., None] / 255.0).astype("float32")  # noqa: E731
    return prep(x), y.astype("int32"), prep(x_test), y_test.astype("int32")


def build_optimizer(name, learning_rate, total_steps, warmup_steps, weight_decay=None):
    """`name` in OPTIMIZERS with peak LR `learning_rate`, SimCLR's warmup and
    cosine decay. LARS: SimCLR's settings; SGD: momentum 0.9 with the same
    coupled decay and exclusions (LARS with no variable adapted); AdamW:
    Keras's, decoupled decay 1e-4 by default, biases and norms excluded."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}. Received: {name!r}")
    if name == "lars":
        return recipes.simclr_lars(learning_rate, total_steps, warmup_steps)
    schedule = recipes.schedule(learning_rate, total_steps, warmup_steps)
    if name == "sgd":
        return optimizers.build_optimizer("lars_sgd", schedule, **recipes.SIMCLR)
    return optimizers.build_optimizer("adamw", schedule, weight_decay=1e-4 if weight_decay is None else weight_decay)


def pretrain(x, args):
    """Builds and trains the SimCLR model; returns (simclr model, history
    dict). Stops at the first non-finite loss (the history then ends there)."""
    keras.utils.set_random_seed(args.seed)
    steps_per_epoch = len(x) // args.batch if args.steps is None else args.steps
    total = steps_per_epoch * args.epochs
    model = simclr_model.SimCLR(simclr_model.encoder(args.encoder), simclr_model.projection_head(),
                                views.augmenter(seed=args.seed))
    model.compile(optimizer=build_optimizer(args.optimizer, args.learning_rate, total,
                                            int(round(args.warmup_epochs * steps_per_epoch))),
                  loss=simclr_model.NTXent(args.temperature))
    history = model.fit(x[: steps_per_epoch * args.batch], np.zeros(steps_per_epoch * args.batch, "float32"),
                        batch_size=args.batch, epochs=args.epochs, shuffle=True, verbose=args.verbose,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    return model, history.history


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="lars", choices=OPTIMIZERS)
    parser.add_argument("--batch", type=int, default=256, help="global batch of images (each gives two views)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default: all of the 60,000 images)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak LR (default: LARS 0.3 x B/256, SGD 0.3 x B/256, AdamW 1e-3 x B/256)")
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="SimCLR: 10 of its 100-1000 epochs")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--encoder", default="resnet8")
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--probe-examples", type=int, default=None, help="train/test images for the probe (default all)")
    parser.add_argument("--mixed-precision", action="store_true", help="Keras's mixed_bfloat16 policy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2)
    args = parser.parse_args(argv)
    for flag in ("batch", "epochs", "probe_epochs"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1. Received: {getattr(args, flag)}")
    if args.learning_rate is None:
        args.learning_rate = (1e-3 if args.optimizer == "adamw" else 0.3) * args.batch / 256
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    x, y, x_test, y_test = load_fashion_mnist()
    start = time.time()
    model, history = pretrain(x, args)
    seconds = time.time() - start
    n = args.probe_examples
    train_f = probe.features(model.encoder, x[:n])
    test_f = probe.features(model.encoder, x_test[:n])
    top1 = probe.linear_probe(train_f, y[:n], test_f, y_test[:n], epochs=args.probe_epochs, seed=args.seed)
    result = dict(optimizer=args.optimizer, batch=args.batch, epochs=args.epochs, learning_rate=args.learning_rate,
                  loss=[float(v) for v in history["loss"]], probe_test_top1=top1, pretrain_seconds=round(seconds, 1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
