"""The ResNet trainer, as Orbit's `StandardTrainer`: the train input (one
iterator over all the run's epochs) and the device loops of `steps.Steps`,
with the steps counted and timed and the divergence guard on their losses
(as Model Garden's trainer checks the loss at each loop's end)."""

import dataclasses
import time

import keras
import numpy as np

from keras_lars.train import guard


@dataclasses.dataclass(frozen=True)
class LoopOutput:
    """One device loop: optimizer steps `first_step` + 1 .. `step` of epoch
    `epoch`, with each step's loss and learning rate (float arrays, one
    entry per step)."""

    epoch: int
    first_step: int
    step: int
    losses: np.ndarray
    learning_rates: np.ndarray


class Trainer:
    """Runs optimizer steps in device loops.

    Args:
        steps: `steps.Steps` (its `train_loop` and `sync_moving_statistics`).
        strategy: the run's `tf.distribute.Strategy`.
        pipeline: `input_pipeline.InputPipeline`.
        schedule: the learning-rate schedule (step -> LR).
        clock: `clock.WallClock`; the loops are booked there.
        steps_per_epoch: int, optimizer steps per epoch.
        epochs: int, the run's last epoch.
        accumulation_steps: int, micro-batches per optimizer step.
        step: int, optimizer steps already done (a resumed run's).
        diverged: callable(step, loss) -> the exception to raise for a
            non-finite `loss` at optimizer step `step` (1-based).
    """

    def __init__(self, steps, strategy, pipeline, schedule, clock, *, steps_per_epoch, epochs, accumulation_steps,
                 step, diverged):
        self._steps, self._strategy, self._pipeline, self._schedule = steps, strategy, pipeline, schedule
        self._clock, self._diverged = clock, diverged
        self.steps_per_epoch, self.epochs, self.accumulation_steps = steps_per_epoch, epochs, accumulation_steps
        self.step = step
        self.epoch_losses, self.epoch_lrs = {}, {}
        self._losses = []  # this epoch's, from this process
        self._iterator = None

    def start(self, first_epoch):
        """One iterator over epochs `first_epoch` .. the last (see
        `InputPipeline.train_dataset_fn`), after the steps already done."""
        if first_epoch > self.epochs:  # a restart after the last epoch (say, preempted at its end)
            return
        spe, k = self.steps_per_epoch, self.accumulation_steps
        done = min(max(self.step - (first_epoch - 1) * spe, 0), spe)
        self._iterator = iter(self._strategy.distribute_datasets_from_function(self._pipeline.train_dataset_fn(
            first_epoch - 1, skip_micro_steps=done * k, epochs=self.epochs - first_epoch + 1,
            micro_steps_per_epoch=spe * k)))

    def train(self, n):
        """Runs `n` optimizer steps (one device loop, within one epoch).

        Returns:
            `LoopOutput`.

        Raises:
            what `diverged` returns, at the first non-finite loss (`step` then
            counts the steps up to it).
        """
        first = self.step
        start = time.perf_counter()
        with self._pipeline.reading("train"):
            losses = self._steps.train_loop(self._iterator, n)
        self._clock.loop(len(losses), time.perf_counter() - start)
        bad = guard.first_non_finite(losses)
        if bad is not None:
            self.step += bad + 1
            raise self._diverged(self.step, float(losses[bad]))
        self.step += len(losses)
        steps = np.arange(first + 1, self.step + 1)
        output = LoopOutput(first // self.steps_per_epoch + 1, first, self.step, losses,
                            keras.ops.convert_to_numpy(self._schedule(steps)))
        self._losses.extend(losses)
        if self.step % self.steps_per_epoch == 0:
            self.epoch_losses[output.epoch] = float(np.mean(self._losses))
            self.epoch_lrs[output.epoch] = float(output.learning_rates[-1])
            self._losses = []
            with self._clock.part("logging"):
                self.sync()
        return output

    def sync(self):
        """Makes the replicas' BatchNorm moving statistics equal (their
        mean), as an eval or a checkpoint needs; done at each epoch's end."""
        self._steps.sync_moving_statistics()

    def close(self):
        """Releases the input iterator."""
        self._iterator = None

    def results(self, global_batch_size):
        """The training side of the run's results."""
        clock = self._clock
        return {
            "train_loss_by_epoch": self.epoch_losses,
            "learning_rate_by_epoch": self.epoch_lrs,
            "optimizer_steps": self.step,
            "train_images_per_second": (clock.timed_steps * global_batch_size / clock.timed_seconds
                                        if clock.timed_steps else None),
            "train_seconds_timed": clock.timed_seconds,
        }
