"""Checkpoints of a run (model, optimizer state, progress) through
`tf.train.CheckpointManager`, and resuming from the latest.

A checkpoint only becomes "latest" once its files are written: the manager
updates the `checkpoint` index file atomically after them, so a process
killed mid-save leaves the previous checkpoint as the one restored.
"""

import os
import shutil
import tempfile

import tensorflow as tf


class Checkpoints:
    """Saves and restores `objects` (e.g. model=, optimizer=, epoch=) under
    `<output_dir>/checkpoints`.

    Args:
        output_dir: the run's output directory.
        chief: bool. Under MultiWorkerMirroredStrategy every worker saves (the
            save is collective) but only the chief keeps its files; the
            others write to a temporary directory that is then removed.
        max_to_keep: int, checkpoints kept (older ones are deleted).
        **objects: trackables to save, as for `tf.train.Checkpoint`.
    """

    def __init__(self, output_dir, chief=True, max_to_keep=2, **objects):
        self.directory = os.path.join(output_dir, "checkpoints")
        self._chief = chief
        self._checkpoint = tf.train.Checkpoint(**objects)
        self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory, max_to_keep) if chief else None
        self._last_step = None

    def restore_latest(self):
        """Restores the latest checkpoint, if any. Returns its path or None.

        Raises:
            AssertionError: (from TensorFlow) if the checkpoint does not match
                the model or optimizer built for this run (other flags).
        """
        path = self.latest()
        if path is not None:
            self._checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def latest(self):
        """The latest checkpoint's path, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def save(self, step):
        """Saves at optimizer step `step` (an int) unless already saved there."""
        if step == self._last_step:
            return
        self._last_step = step
        if self._chief:
            self._manager.save(checkpoint_number=step)
            return
        directory = tempfile.mkdtemp(prefix="worker_checkpoint_")
        try:
            tf.train.CheckpointManager(self._checkpoint, directory, max_to_keep=1).save(checkpoint_number=step)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
