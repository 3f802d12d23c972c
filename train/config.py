"""The trainer's configuration: one dataclass, parsed from flags in one place."""

import argparse
import dataclasses


@dataclasses.dataclass
class TrainConfig:
    """Every hyperparameter of a run; written whole into the JSON summary."""

    dataset: str = "fashion_mnist"
    model: str = "resnet8"
    optimizer: str = "lars"
    global_batch_size: int = 2048
    epochs: int = 10
    steps_per_epoch: int = 0
    base_learning_rate: float = 10.0
    warmup_epochs: float = None
    end_learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    eta: float = None
    momentum: float = 0.9
    label_smoothing: float = 0.0
    image_size: int = 0
    data_dir: str = ""
    manual_dir: str = ""
    output_dir: str = "runs/default"
    jit_compile: str = "auto"
    seed: int = 0

    def __post_init__(self):
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        # CLARS replaces warmup and uses eta 0.01 (Huo et al.'s ImageNet runs).
        if self.warmup_epochs is None:
            self.warmup_epochs = 0.0 if self.optimizer == "clars" else 2.0
        if self.eta is None:
            self.eta = 0.01 if self.optimizer == "clars" else 0.001
        _require(self.global_batch_size >= 1, "global_batch_size", self.global_batch_size, "an int >= 1")
        _require(self.epochs >= 1, "epochs", self.epochs, "an int >= 1")
        _require(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch, "an int >= 0 (0: a full pass)")
        _require(self.base_learning_rate > 0, "base_learning_rate", self.base_learning_rate, "a float > 0")
        _require(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", self.warmup_epochs, "a float in [0, epochs]")
        _require(self.end_learning_rate >= 0, "end_learning_rate", self.end_learning_rate, "a float >= 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a float >= 0")
        _require(self.eta > 0, "eta", self.eta, "a float > 0")
        _require(0 <= self.momentum < 1, "momentum", self.momentum, "a float in [0, 1)")
        _require(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "a float in [0, 1)")
        _require(self.image_size >= 0, "image_size", self.image_size, "an int >= 0 (0 keeps the dataset's size)")
        _require(self.jit_compile in ("auto", "on", "off"), "jit_compile", self.jit_compile, "auto, on or off")


OPTIMIZERS = ("lars", "clars", "sgd")

_HELP = {
    "dataset": "TFDS dataset name: fashion_mnist (default; offline from Debian's dataset-fashion-mnist), "
    "cifar10, imagenet2012 (needs --manual-dir), ...",
    "model": "resnet50 (v1.5, as MLPerf) or a CIFAR-style ResNet by depth: resnet8, resnet20, resnet56, ...",
    "optimizer": "lars (keras_lars.LARS), clars (keras_lars.CLARS: per-example gradient norms, no warmup "
    "by default) or sgd (Keras SGD with momentum, the baseline, with Keras's "
    "decoupled weight decay w -= lr * wd * w); both use the same warmup + polynomial decay schedule",
    "global_batch_size": "examples per optimizer step, summed over all replicas",
    "epochs": "training epochs",
    "steps_per_epoch": "optimizer steps per epoch; 0 (default) is one full pass over the train split at the "
    "global batch (remainder dropped). The schedule's warmup and decay follow epochs of this length",
    "base_learning_rate": "peak learning rate reached at the end of warmup (MLPerf lars_opt_base_learning_rate)",
    "warmup_epochs": "linear warmup length in epochs, may be fractional (lars_opt_learning_rate_warmup_epochs); "
    "default 2 for lars and sgd, 0 for clars",
    "end_learning_rate": "learning rate at the end of the polynomial (power 2) decay (lars_opt_end_learning_rate)",
    "weight_decay": "coupled weight decay beta (lars_opt_weight_decay); biases and BN parameters excluded",
    "eta": "trust coefficient: default 0.001 for lars (and MLPerf), 0.01 for clars (Huo et al.)",
    "momentum": "momentum m (lars_opt_momentum)",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "image_size": "resize images to this square size in pixels; 0 keeps the dataset's size",
    "data_dir": "TFDS data directory (default: TFDS's, ~/tensorflow_datasets)",
    "manual_dir": "TFDS manual_dir holding manually downloaded files (ImageNet tars)",
    "output_dir": "where TensorBoard logs and summary.json go",
    "jit_compile": "XLA for the whole train step: auto (on with a GPU or TPU, off on CPU where XLA:CPU is "
    "about 2x slower for these convolutions), on, off",
    "seed": "random seed for initialisation and shuffling",
}


def parse_args(argv=None):
    """Parses command-line flags into a `TrainConfig` (flags: --global-batch-size, ...)."""
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a ResNet with LARS (or SGD) at large batch, through tensorflow-datasets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kwargs = {"type": field.type, "default": field.default}
        if field.name == "optimizer":
            kwargs["choices"] = OPTIMIZERS
        if field.name == "jit_compile":
            kwargs["choices"] = ("auto", "on", "off")
        parser.add_argument(flag, help=_HELP[field.name], **kwargs)
    args = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(args))
    except ValueError as e:
        parser.error(str(e))


def _require(ok, name, value, accepted):
    if not ok:
        raise ValueError(f"--{name.replace('_', '-')} must be {accepted}. Received: {value!r}")
