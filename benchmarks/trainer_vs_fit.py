"""The trainer against Keras `model.fit` on the same job (not a test).

The same model (ResNet-8), data (Fashion-MNIST through the trainer's own
input pipeline: same shuffling and augmentation per epoch), global batch,
optimizer (LARS with the trainer's warmup + polynomial decay schedule) and
loss, on the default strategy, float32, XLA off (the trainer's choice on CPU;
`fit(jit_compile=False)`), in one process: the trainer (`keras_lars.train`'s
`run`, loops of `--steps-per-loop`) and `fit` (`steps_per_execution` the same)
take turns, `--rounds` times. Reported: training images/s after each one's
first epoch (the trainer's `train_images_per_second`; fit's from its epoch
times) and wall time, each as the trainer / fit ratio (images/s >= 0.98 is
the goal), medians over rounds. Each does one eval of the test split at the
end (fit: `model.evaluate`).

    python benchmarks/trainer_vs_fit.py [--batch 2048] [--epochs 3] [--rounds 2]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_lars.train.config import TrainConfig  # noqa: E402
from keras_lars.train.input_pipeline import InputPipeline  # noqa: E402
from keras_lars.train.models import build_model  # noqa: E402
from keras_lars.train.runner import build_optimizer, run  # noqa: E402


def _config(args, output_dir):
    return TrainConfig(dataset="fashion_mnist", model="resnet8", global_batch_size=args.batch, epochs=args.epochs,
                       lars_opt_learning_rate_warmup_epochs=1, label_smoothing=0, eval_every_epochs=args.epochs,
                       steps_per_loop=args.steps_per_loop, input_benchmark_steps=0, output_dir=output_dir)


def _trainer(args):
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run(_config(args, out))
        return summary["train_images_per_second"], time.perf_counter() - start


class _EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _fit(args):
    start = time.perf_counter()
    config = _config(args, "")
    keras.utils.set_random_seed(config.seed)
    pipeline = InputPipeline(config.dataset, config.micro_batch_size, seed=config.seed)
    steps = pipeline.info.train_examples // config.global_batch_size
    context = tf.distribute.InputContext()
    # The trainer's epochs, one after the other.
    train = pipeline.train_dataset_fn(0)(context)
    for epoch in range(1, config.epochs):
        train = train.concatenate(pipeline.train_dataset_fn(epoch)(context))
    model = build_model(config.model, pipeline.info.num_classes, pipeline.info.input_shape)
    optimizer, _ = build_optimizer(config, steps, model.trainable_variables)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"],
                  jit_compile=False, steps_per_execution=args.steps_per_loop)
    times = _EpochTimes()
    model.fit(train, epochs=config.epochs, steps_per_epoch=steps, callbacks=[times], verbose=0)
    model.evaluate(pipeline.eval_dataset_fn()(context), steps=pipeline.eval_steps, verbose=0)  # repeats: one pass
    rate = steps * config.global_batch_size * (config.epochs - 1) / sum(times.seconds[1:])
    return rate, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-loop", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    rows = []
    for round_ in range(args.rounds):
        trainer, fit = _trainer(args), _fit(args)
        rows.append((trainer, fit))
        print(f"round {round_ + 1}: trainer {trainer[0]:.0f} img/s, wall {trainer[1]:.1f} s; "
              f"fit {fit[0]:.0f} img/s, wall {fit[1]:.1f} s", flush=True)
    speed = statistics.median(t[0] / f[0] for t, f in rows)
    wall = statistics.median(t[1] / f[1] for t, f in rows)
    print(f"trainer / fit: images/s {speed:.3f} (goal >= 0.98), wall time {wall:.3f} "
          f"(ResNet-8, Fashion-MNIST, batch {args.batch}, {args.epochs} epochs, loops of {args.steps_per_loop})")


if __name__ == "__main__":
    main()
