"""The outer training loop, as Orbit's `Controller` (orbit/controller.py):
it cuts a run's optimizer steps into device loops (`Steps.train_loop`, many
steps per host call) that end at epoch ends and at `--checkpoint-every-steps`
multiples (and `--layer-statistics-every` ones), and between loops runs small
actions: progress bar and TensorBoard scalars, layer statistics, the
divergence guard, checkpoints, evals, MLPerf blocks.
"""

import hashlib
import os
import time

import keras
import numpy as np
import tensorflow as tf
from mlperf_logging.mllog import constants as mlperf

from keras_lars import layer_statistics
from keras_lars.train import guard, preemption, records


# The parts of the controller's wall time: the timed device loops ("steps"),
# the process's first loop split into its steps (at the later loops' rate)
# and the rest (tracing and XLA compilation), making and releasing the input
# iterators, evals, checkpoint saves (and their finiteness checks), and the
# per-loop logging (TensorBoard, progress, layer statistics, BatchNorm
# statistics sync).
WALL_PARTS = ("steps", "first_loop_steps", "first_loop_compile", "input_iterators", "evals", "checkpoints",
              "logging")


class _Timer:
    def __init__(self, seconds, part):
        self._seconds, self._part = seconds, part

    def __enter__(self):
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        self._seconds[self._part] += time.perf_counter() - self._start


def loop_lengths(start, end, steps_per_loop, *every):
    """Sizes of the device loops that run optimizer steps start+1 .. end.

    Each loop has at most `steps_per_loop` steps and ends at every multiple of
    each of `every` (ints; 0: none), such as `--checkpoint-every-steps`, so
    the loops between two boundaries do not depend on where a run resumed.

    Returns:
        list of ints >= 1 summing to `end - start`.
    """
    lengths, step = [], start
    while step < end:
        stop = min(end, step + steps_per_loop)
        for n in every:
            if n:
                stop = min(stop, (step // n + 1) * n)
        lengths.append(stop - step)
        step = stop
    return lengths


class Controller:
    """Runs `job` (a `runner.Job`) from its restored progress to its last
    epoch or its target; `train()` returns the results, which `results()`
    also gives after a `TrainerError` (a diverged run)."""

    def __init__(self, job):
        self.job = job
        self.config = job.config
        self.step = int(job.progress["steps_done"].numpy())
        self.evals = records.read_evals(self.config.output_dir)
        self.target_reached = self._reached(float(job.progress["best_top1"].numpy()))
        self.epoch_losses, self.epoch_lrs = {}, {}
        self.timed_seconds, self.timed_steps, self._loops_run = 0.0, 0, 0
        self._first_loop = (0, 0.0)  # (steps, seconds)
        self._eval_iterator = None
        # Wall time by part (seconds), for `results()["wall_time"]`.
        self.seconds = dict.fromkeys(WALL_PARTS, 0.0)
        self._block_first = None
        self._finite = guard.FiniteCheck(job.model.weights + _state_variables(job.model.optimizer))
        self._writer = (tf.summary.create_file_writer(os.path.join(self.config.output_dir, "tensorboard"))
                        if job.chief else None)
        self._statistics = (layer_statistics.LayerStatisticsWriter(
            self.config.output_dir,
            tensorboard_dir=os.path.join(self.config.output_dir, "tensorboard", "layer_statistics"))
            if job.chief and self.config.layer_statistics_every else None)

    def train(self):
        """Raises `preemption.Preempted` after a SIGTERM or SIGINT (with a
        checkpoint at the boundary where it was seen), `TrainerError`s."""
        self._watch = preemption.PreemptionWatch(self.job.strategy, self._save_now)
        first = int(self.job.progress["epochs_done"].numpy()) + 1
        try:
            iterator = self._train_iterator(first)
            for epoch in range(first, self.config.epochs + 1):
                if self.target_reached:
                    break
                self._start_block(epoch)
                self._train_epoch(epoch, iterator)
                if self.config.eval_due(epoch):
                    self._evaluate(epoch)
                    self._stop_block()
                self.job.progress["epochs_done"].assign(epoch)
                self._checkpoint()
                self._watch.boundary()
        finally:
            with self._timer("input_iterators"):
                iterator = self._eval_iterator = None
            self._watch.close()
            for writer in (self._writer, self._statistics):
                if writer:
                    writer.close()
        return self.results()

    def results(self):
        evals = self.evals
        top1 = [evals[e]["top1"] for e in sorted(evals)]
        completed = int(self.job.progress["epochs_done"].numpy()) == self.config.epochs
        return {
            "final_top1": top1[-1] if top1 else None,
            "best_top1": max(top1) if top1 else None,
            "target_accuracy": self.config.target_accuracy,
            "target_reached": self.target_reached,
            "completed": self.target_reached or completed,
            "evals": [{"epoch": e, **evals[e]} for e in sorted(evals)],
            "train_loss_by_epoch": self.epoch_losses,
            "learning_rate_by_epoch": self.epoch_lrs,
            "epochs_done": int(self.job.progress["epochs_done"].numpy()),
            "optimizer_steps": self.step,
            "steps_per_loop": self.job.steps_per_loop,
            "train_images_per_second": (self.timed_steps * self.config.global_batch_size / self.timed_seconds
                                        if self.timed_steps else None),
            "train_seconds_timed": self.timed_seconds,
            "wall_time": self._wall_time(),
            "weights_sha256": weights_fingerprint(self.job.model),
        }

    def _wall_time(self):
        steps, seconds = self._first_loop
        rate = self.timed_seconds / self.timed_steps if self.timed_steps else seconds / max(steps, 1)
        first_steps = min(steps * rate, seconds)
        return {**self.seconds, "steps": self.timed_seconds, "first_loop_steps": first_steps,
                "first_loop_compile": seconds - first_steps}

    # The epoch: device loops between boundaries.

    def _train_iterator(self, first):
        """One iterator over epochs `first` .. the last (see
        `InputPipeline.train_dataset_fn`), after the steps already done."""
        job, spe, k = self.job, self.job.steps_per_epoch, self.config.gradient_accumulation_steps
        if first > self.config.epochs:  # a restart after the last epoch (say, preempted at its end)
            return None
        done = min(max(self.step - (first - 1) * spe, 0), spe)
        with self._timer("input_iterators"):
            return iter(job.strategy.distribute_datasets_from_function(job.pipeline.train_dataset_fn(
                first - 1, skip_micro_steps=done * k, epochs=self.config.epochs - first + 1,
                micro_steps_per_epoch=spe * k)))

    def _train_epoch(self, epoch, iterator):
        job, spe = self.job, self.job.steps_per_epoch
        epoch_start = (epoch - 1) * spe
        done = min(max(self.step - epoch_start, 0), spe)
        if done == spe:
            return
        progbar = keras.utils.Progbar(spe, verbose=(2 if os.environ.get("CI") else 1) if job.chief else 0,
                                      stateful_metrics=["learning_rate"])
        if job.chief:
            print(f"Epoch {epoch}/{self.config.epochs}")
        losses = []
        for length in loop_lengths(self.step, epoch_start + spe, job.steps_per_loop,
                                   self.config.checkpoint_every_steps, self.config.layer_statistics_every):
            loop_losses = self._run_loop(iterator, length)
            losses.extend(loop_losses)
            with self._timer("logging"):
                lr = self._log_loop(loop_losses)
                self._log_layer_statistics()
                progbar.update(self.step - epoch_start, [("loss", float(np.mean(loop_losses))), ("learning_rate", lr)])
            every = self.config.checkpoint_every_steps
            if every and self.step % every == 0 and self.step % spe:
                with self._timer("logging"):
                    job.steps.sync_moving_statistics()
                self._checkpoint()
            self._watch.boundary()
        self.epoch_losses[epoch] = float(np.mean(losses))
        self.epoch_lrs[epoch] = lr
        with self._timer("logging"):
            job.steps.sync_moving_statistics()

    def _run_loop(self, iterator, length):
        """One device loop of `length` steps; the divergence guard on its losses."""
        start = time.perf_counter()
        with self.job.pipeline.reading("train"):
            losses = self.job.steps.train_loop(iterator, length)
        if self._loops_run:  # the process's first loop traces and compiles
            self.timed_seconds += time.perf_counter() - start
            self.timed_steps += len(losses)
        else:
            self._first_loop = (len(losses), time.perf_counter() - start)
        self._loops_run += 1
        bad = guard.first_non_finite(losses)
        if bad is not None:
            self.step += bad + 1
            raise guard.loss_diverged(self.config, self.step, float(losses[bad]), self.job.checkpoints.latest())
        self.step += len(losses)
        return losses

    def _log_loop(self, losses):
        """TensorBoard: each step's loss and learning rate. Returns the last LR."""
        steps = np.arange(self.step - len(losses) + 1, self.step + 1)
        lrs = keras.ops.convert_to_numpy(self.job.schedule(steps))
        if self._writer:
            with self._writer.as_default():
                for step, loss, lr in zip(steps, losses, lrs):
                    tf.summary.scalar("train/loss", loss, step=step)
                    tf.summary.scalar("train/learning_rate", lr, step=step)
        return float(lrs[-1])

    def _log_layer_statistics(self):
        """The last step's per-layer statistics, at multiples of
        `--layer-statistics-every` (loops end there)."""
        if self._statistics and self.step % self.config.layer_statistics_every == 0:
            self._statistics.write(self.job.model.optimizer, self.step)

    # Actions between loops.

    def _checkpoint(self):
        """Saves unless a weight or optimizer value is non-finite (then the
        run stops: the previous checkpoint stays the latest)."""
        with self._timer("checkpoints"):
            self._check_finite()
            self.job.progress["steps_done"].assign(self.step)
            self.job.checkpoints.save(self.step)

    def _save_now(self):
        """A checkpoint at the current step, for a preemption: (step, path)."""
        self.job.steps.sync_moving_statistics()
        self._checkpoint()
        return self.step, self.job.checkpoints.latest()

    def _check_finite(self):
        if not self._finite.check():
            raise guard.weights_diverged(self.config, self.step, self.job.checkpoints.latest())

    def _timer(self, part):
        return _Timer(self.seconds, part)

    def _evaluate(self, epoch):
        """Top-1 and mean loss over the whole eval split, each example once."""
        with self._timer("evals"):
            self._evaluate_now(epoch)

    def _evaluate_now(self, epoch):
        job = self.job
        self._check_finite()
        job.log.start(mlperf.EVAL_START, epoch_num=epoch)
        if self._eval_iterator is None:
            # One iterator for every eval (the dataset repeats): a new one per
            # eval took about a second to tear down.
            self._eval_iterator = iter(job.strategy.distribute_datasets_from_function(job.pipeline.eval_dataset_fn()))
        totals = np.zeros(3)
        with job.pipeline.reading(job.pipeline.info.eval_split):
            for _ in range(job.pipeline.eval_steps):
                totals += [float(x) for x in job.steps.eval_step(self._eval_iterator)]
        correct, count, loss_sum = totals
        if int(count) != job.pipeline.info.eval_examples:
            raise RuntimeError(f"Evaluated {count} examples, expected {job.pipeline.info.eval_examples}.")
        top1 = float(correct / count)
        job.log.event(mlperf.EVAL_ACCURACY, top1, epoch_num=epoch)
        job.log.end(mlperf.EVAL_STOP, epoch_num=epoch)
        record = {"top1": top1, "loss": float(loss_sum / count), "examples": int(count), "step": self.step}
        self.evals = {**self.evals, epoch: record}
        if job.chief:
            print(f"eval after epoch {epoch} (step {self.step}): top-1 {top1:.4f}, loss {record['loss']:.4f}, "
                  f"{int(count)} examples")
            records.write_evals(self.config.output_dir, self.evals)
        if self._writer:
            with self._writer.as_default(step=self.step):
                tf.summary.scalar("eval/top1", top1)
                tf.summary.scalar("eval/loss", record["loss"])
        job.progress["best_top1"].assign(max(float(job.progress["best_top1"].numpy()), top1))
        self.target_reached = self._reached(top1)

    def _reached(self, top1):
        return self.config.target_accuracy is not None and top1 >= self.config.target_accuracy

    def _start_block(self, epoch):
        # MLPerf: a block spans the epochs up to the next eval.
        if self._block_first is None:
            self._block_first = epoch
            last = epoch
            while not self.config.eval_due(last):
                last += 1
            self.job.log.start(mlperf.BLOCK_START, first_epoch_num=epoch, epoch_count=last - epoch + 1)

    def _stop_block(self):
        self.job.log.end(mlperf.BLOCK_STOP, first_epoch_num=self._block_first)
        self._block_first = None


def _state_variables(optimizer):
    """The optimizer's variables less its layer statistics: a statistic of a
    diverging step (an infinite trust ratio) is what the user should see,
    not a reason to refuse a checkpoint."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    statistics = {id(v) for v in getattr(inner, "layer_statistics_variables", [])}
    return [v for v in optimizer.variables if id(v) not in statistics]


def weights_fingerprint(model):
    """SHA-256 of all the model's weights (float32 bytes, in order)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value), np.float32).tobytes())
    return digest.hexdigest()
