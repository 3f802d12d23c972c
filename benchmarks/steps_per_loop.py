"""Optimizer steps per second for device loops of 1 vs N steps (not a test).

The trainer's own `Steps.train_loop` on real Fashion-MNIST through its input
pipeline (ResNet-8, LARS, float32, the default strategy): loops of each
length run interleaved, several rounds, so that all see the same machine
state; the medians of steps/s are printed with their ratio to loops of 1.
This is how `--steps-per-loop 0` (auto) was chosen for CPUs.

    python benchmarks/steps_per_loop.py [--batch 128] [--loops 1 10 50] [--steps 100] [--rounds 5]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from keras_lars.train.config import TrainConfig  # noqa: E402
from keras_lars.train.input_pipeline import InputPipeline  # noqa: E402
from keras_lars.train.models import build_model  # noqa: E402
from keras_lars.train.optimizers import from_config as build_optimizer  # noqa: E402
from keras_lars.train.steps import Steps  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--loops", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--steps", type=int, default=100, help="steps timed per loop length and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    config = TrainConfig(dataset="fashion_mnist", model="resnet8", global_batch_size=args.batch, epochs=100,
                         lars_opt_learning_rate_warmup_epochs=1)
    pipeline = InputPipeline(config.dataset, args.batch)
    strategy = tf.distribute.get_strategy()
    model = build_model(config.model, pipeline.info.num_classes, pipeline.info.input_shape)
    optimizer, _ = build_optimizer(config, pipeline.info.train_examples // args.batch, model.trainable_variables)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    steps = Steps(model, strategy, args.batch, 0.0, xla=False)
    epoch = 0

    def iterator():
        nonlocal epoch
        epoch += 1
        it = iter(strategy.distribute_datasets_from_function(pipeline.train_dataset_fn(epoch)))
        next(it)  # pipeline start-up outside the timing
        return it

    it = iterator()
    for length in args.loops:  # the first call traces (one trace serves every length)
        steps.train_loop(it, length)
    rates = {length: [] for length in args.loops}
    for _ in range(args.rounds):
        for length in args.loops:
            it = iterator()
            start = time.perf_counter()
            for _ in range(args.steps // length):
                steps.train_loop(it, length)
            rates[length].append((args.steps // length) * length / (time.perf_counter() - start))
    base = statistics.median(rates[args.loops[0]])
    print(f"ResNet-8, Fashion-MNIST, batch {args.batch}, LARS, CPU, {args.rounds} rounds of {args.steps} steps")
    print("| steps per loop | steps/s (median) | range | vs loops of 1 |")
    print("| --- | --- | --- | --- |")
    for length in args.loops:
        median = statistics.median(rates[length])
        print(f"| {length} | {median:.2f} | {min(rates[length]):.2f}-{max(rates[length]):.2f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
