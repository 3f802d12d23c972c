"""Preemption: after a SIGTERM or SIGINT, a checkpoint at the next loop
boundary and `preemption.Preempted` (see `keras_lars.train.preemption`)."""

from keras_lars.train import preemption
from keras_lars.train.loop.controller import Action


class PreemptionSave(Action):
    """Watches for the signals from `start` to `close`; put it after the
    actions whose work must come before the save at a boundary.

    Args:
        strategy: the run's `tf.distribute.Strategy` (several workers agree
            on the boundary).
        save: callable() -> (step, checkpoint path)
            (`SaveCheckpoint.save_now`).
    """

    part = "checkpoints"

    def __init__(self, strategy, save):
        self._strategy, self._save = strategy, save
        self._watch = None

    def start(self):
        self._watch = preemption.PreemptionWatch(self._strategy, self._save)

    def loop_end(self, output):
        self._watch.boundary()

    def epoch_end(self, epoch):
        self._watch.boundary()

    def close(self):
        if self._watch is not None:
            self._watch.close()
