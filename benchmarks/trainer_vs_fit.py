"""The trainer against Keras `model.fit` on the same job (not a test).

The same model (ResNet-8), data (Fashion-MNIST through the trainer's own
input pipeline: same shuffling and augmentation per epoch), global batch,
optimizer (LARS with the trainer's warmup + polynomial decay schedule) and
loss, on the default strategy, float32, XLA off (the trainer's choice on CPU;
`fit(jit_compile=False)`), in one process: the trainer (`keras_lars.train`'s
`run`, loops of `--steps-per-loop`) and `fit` (`steps_per_execution` the same)
take turns, `--rounds` times, alternating which goes first. Reported:
training images/s over every device loop but the first, which traces (the
trainer's `train_images_per_second`; fit's from the time and the optimizer
steps of each `train_function` call), and wall time, each as the trainer /
fit ratio, medians over rounds. Both timings include the epoch boundaries
crossed after the first loop; neither includes the host work between loops.
Each does one eval of the test split at the end (fit: `model.evaluate`).

Whole runs minutes apart drift with the machine (0.08 between rounds on a
2-core machine), so the step itself is also compared on loops taken in
turn: the trainer's device loop (`Steps.train_loop`) and fit's
(`model.train_function`, which `fit` calls once per `steps_per_execution`
steps), `--loops` of each alternating on two copies of the model, the
median loop time of each compared. The goal (>= 0.98) is for the whole
runs' images/s.

    python benchmarks/trainer_vs_fit.py [--batch 2048] [--epochs 3] [--rounds 2] [--loops 12]
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
from keras_lars.train.optimizers import from_config as build_optimizer  # noqa: E402
from keras_lars.train.runner import run  # noqa: E402
from keras_lars.train.steps import Steps  # noqa: E402


def _config(args, output_dir):
    return TrainConfig(dataset="fashion_mnist", model="resnet8", global_batch_size=args.batch, epochs=args.epochs,
                       lars_opt_learning_rate_warmup_epochs=1, label_smoothing=0, eval_every_epochs=args.epochs,
                       steps_per_loop=args.steps_per_loop, input_benchmark_steps=0, output_dir=output_dir)


def _trainer(args):
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run(_config(args, out))
        return summary["train_images_per_second"], time.perf_counter() - start


class _ExecutionTimes(keras.callbacks.Callback):
    """Seconds and optimizer steps of each `train_function` call (`fit` calls
    the batch hooks once per `steps_per_execution`). Steps are counted, not
    assumed: with 29 steps per epoch and executions of 10, `fit` runs 10,
    10, 10 (the third crosses into the next epoch) and ends with 8."""

    def __init__(self):
        super().__init__()
        self.seconds, self.steps = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self._iterations = int(self.model.optimizer.iterations.numpy())
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.steps.append(int(self.model.optimizer.iterations.numpy()) - self._iterations)


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
    times = _ExecutionTimes()
    model.fit(train, epochs=config.epochs, steps_per_epoch=steps, callbacks=[times], verbose=0)
    model.evaluate(pipeline.eval_dataset_fn()(context), steps=pipeline.eval_steps, verbose=0)  # repeats: one pass
    # As the trainer's rate: every call but the first (which traces).
    rate = sum(times.steps[1:]) * config.global_batch_size / sum(times.seconds[1:])
    return rate, time.perf_counter() - start


def _loops_in_turn(args):
    """Median seconds per device loop of `--steps-per-loop` steps: (trainer, fit)."""
    config = _config(args, "")
    pipeline = InputPipeline(config.dataset, config.micro_batch_size, seed=config.seed)
    steps_per_epoch = pipeline.info.train_examples // config.global_batch_size
    strategy = tf.distribute.get_strategy()

    def dataset(context=tf.distribute.InputContext()):
        return pipeline.train_dataset_fn(0)(context).repeat()

    def model_and_optimizer():
        keras.utils.set_random_seed(config.seed)
        model = build_model(config.model, pipeline.info.num_classes, pipeline.info.input_shape)
        return model, build_optimizer(config, steps_per_epoch, model.trainable_variables)[0]

    model, optimizer = model_and_optimizer()
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    steps = Steps(model, strategy, config.micro_batch_size, config.label_smoothing, xla=False)
    trainer_iterator = iter(strategy.distribute_datasets_from_function(dataset))
    fit_model, fit_optimizer = model_and_optimizer()
    fit_model.compile(optimizer=fit_optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
                      metrics=["accuracy"], jit_compile=False, steps_per_execution=args.steps_per_loop)
    fit_model.make_train_function()
    fit_iterator = iter(dataset())
    loops = {
        "trainer": lambda: steps.train_loop(trainer_iterator, args.steps_per_loop),
        "fit": lambda: float(fit_model.train_function(fit_iterator)["loss"]),
    }
    seconds = {name: [] for name in loops}
    for i in range(args.loops + 2):  # the first two of each trace and warm up
        for name, loop in loops.items():
            start = time.perf_counter()
            loop()
            if i >= 2:
                seconds[name].append(time.perf_counter() - start)
    return statistics.median(seconds["trainer"]), statistics.median(seconds["fit"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-loop", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loops", type=int, default=12, help="device loops of each taken in turn")
    args = parser.parse_args(argv)
    trainer_loop, fit_loop = _loops_in_turn(args)
    print(f"loops in turn: trainer {trainer_loop:.2f} s, fit {fit_loop:.2f} s per {args.steps_per_loop} steps; "
          f"trainer / fit images/s {fit_loop / trainer_loop:.3f}", flush=True)
    rows = []
    for round_ in range(args.rounds):
        if round_ % 2:  # the machine drifts: each goes first in turn
            fit = _fit(args)
            trainer = _trainer(args)
        else:
            trainer = _trainer(args)
            fit = _fit(args)
        rows.append((trainer, fit))
        print(f"round {round_ + 1}: trainer {trainer[0]:.0f} img/s, wall {trainer[1]:.1f} s; "
              f"fit {fit[0]:.0f} img/s, wall {fit[1]:.1f} s", flush=True)
    if not rows:
        return
    speed = statistics.median(t[0] / f[0] for t, f in rows)
    wall = statistics.median(t[1] / f[1] for t, f in rows)
    print(f"whole runs, trainer / fit: images/s {speed:.3f} (goal >= 0.98), wall time {wall:.3f} "
          f"(ResNet-8, Fashion-MNIST, batch {args.batch}, {args.epochs} epochs, loops of {args.steps_per_loop})")


if __name__ == "__main__":
    main()
