"""Checkpoints: at each epoch's end and at each multiple of
`--checkpoint-every-steps` inside an epoch, never of a non-finite state."""

from keras_lars.train.loop.controller import Action


class SaveCheckpoint(Action):
    """Saves the model, the optimizer and the run's progress.

    Args:
        checkpoints: `checkpoints.Checkpoints`.
        progress: {"steps_done", "epochs_done", ...}: the tf.Variables the
            checkpoints hold; set here before each save.
        weight_guard: `guard.WeightGuard`: a non-finite weight stops the run
            instead (the previous checkpoint stays the latest).
        trainer: the `Trainer` (its `step`, and `sync` before a save).
        every: int, `--checkpoint-every-steps` (0: epoch ends only).
        steps_per_epoch: int.
    """

    part = "checkpoints"

    def __init__(self, checkpoints, progress, weight_guard, trainer, every, steps_per_epoch):
        self._checkpoints, self._progress, self._guard = checkpoints, progress, weight_guard
        self._trainer, self._every, self._steps_per_epoch = trainer, every, steps_per_epoch

    def loop_end(self, output):
        if self._every and output.step % self._every == 0 and output.step % self._steps_per_epoch:
            self.save_now()

    def epoch_end(self, epoch):
        self._progress["epochs_done"].assign(epoch)
        self._save()

    def save_now(self):
        """A checkpoint at the trainer's current step (BatchNorm statistics
        synchronized first), as a preemption needs: returns (step, path)."""
        self._trainer.sync()
        self._save()
        return self._trainer.step, self._checkpoints.latest()

    def _save(self):
        step = self._trainer.step
        self._guard.check(step)
        self._progress["steps_done"].assign(step)
        self._checkpoints.save(step)
