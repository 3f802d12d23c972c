"""Runs one training job: data, model, optimizer, `model.fit`, summary."""

import dataclasses
import json
import math
import os
import time

import keras
import tensorflow as tf

import keras_lars
from train.data import make_datasets
from train.models import build_model


def build_optimizer(config, steps_per_epoch, trainable_variables):
    """The optimizer and its MLPerf schedule (warmup + poly decay, power 2).

    Args:
        config: `TrainConfig`.
        steps_per_epoch: optimizer steps per epoch at the global batch.
        trainable_variables: the model's; those with ndim <= 1 (biases, BN)
            get no weight decay under either optimizer.
    """
    train_steps = steps_per_epoch * config.epochs
    schedule = keras_lars.schedules.WarmupPolynomialDecay(
        base_learning_rate=config.base_learning_rate,
        warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
        train_steps=train_steps,
        end_learning_rate=config.end_learning_rate,
    )
    if config.optimizer in ("lars", "clars"):
        optimizer_cls = keras_lars.LARS if config.optimizer == "lars" else keras_lars.CLARS
        return optimizer_cls(
            learning_rate=schedule,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            eta=config.eta,
        )
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_list=[v for v in trainable_variables if len(v.shape) <= 1])
    return optimizer


class Throughput(keras.callbacks.Callback):
    """Train images/second per epoch, timed from epoch start to the start of
    evaluation (evaluation excluded)."""

    def __init__(self, global_batch_size):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.epoch_seconds = []
        self.epoch_images = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        self._end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(self._end - self._start)
        self.epoch_images.append(self._steps * self.global_batch_size)

    def images_per_second(self, skip_first=True):
        """Mean over epochs; the first (tracing, warm-up) is skipped when there are others."""
        start = 1 if skip_first and len(self.epoch_seconds) > 1 else 0
        return sum(self.epoch_images[start:]) / sum(self.epoch_seconds[start:])


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the optimizer's current learning rate in the epoch logs (so History
    and TensorBoard record it)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _use_xla(setting):
    if setting != "auto":
        return setting == "on"
    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def run(config):
    """Trains and evaluates; writes TensorBoard logs and `summary.json` to
    `config.output_dir`. Returns the summary dict."""
    wall_start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    os.makedirs(config.output_dir, exist_ok=True)
    train_ds, eval_ds, info = make_datasets(
        config.dataset,
        config.global_batch_size,
        data_dir=config.data_dir or None,
        manual_dir=config.manual_dir or None,
        image_size=config.image_size or None,
        seed=config.seed,
    )
    steps_per_epoch = config.steps_per_epoch or info["train_examples"] // config.global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"--global-batch-size {config.global_batch_size} exceeds the {info['train_examples']} "
            f"training examples of {config.dataset}."
        )
    model = build_model(config.model, info["num_classes"], info["input_shape"])
    optimizer = build_optimizer(config, steps_per_epoch, model.trainable_variables)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="top1")],
        jit_compile=_use_xla(config.jit_compile),
    )
    if config.optimizer == "clars":
        keras_lars.attach_per_example_norms(model)
    num_classes = info["num_classes"]
    one_hot = lambda x, y: (x, tf.one_hot(y, num_classes))  # noqa: E731
    throughput = Throughput(config.global_batch_size)
    history = model.fit(
        train_ds.map(one_hot).repeat(),
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=eval_ds.map(one_hot),
        callbacks=[
            throughput,
            LearningRateLogger(),
            keras.callbacks.TensorBoard(os.path.join(config.output_dir, "tensorboard")),
        ],
        verbose=2 if os.environ.get("CI") else 1,
    )
    eval_top1 = [float(x) for x in history.history["val_top1"]]
    summary = {
        "final_top1": eval_top1[-1],
        "best_top1": max(eval_top1),
        "eval_split": info["eval_split"],
        "eval_examples": info["eval_examples"],
        "train_images_per_second": throughput.images_per_second(),
        "train_seconds": sum(throughput.epoch_seconds),
        "wall_seconds": time.perf_counter() - wall_start,
        "steps_per_epoch": steps_per_epoch,
        "trainable_parameters": int(sum(math.prod(v.shape) for v in model.trainable_variables)),
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "config": dataclasses.asdict(config),
    }
    with open(os.path.join(config.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"final test top-1 {summary['final_top1']:.4f}, best {summary['best_top1']:.4f}, "
        f"{summary['train_images_per_second']:.0f} train images/s, wall {summary['wall_seconds']:.0f} s; "
        f"summary in {os.path.join(config.output_dir, 'summary.json')}"
    )
    return summary
