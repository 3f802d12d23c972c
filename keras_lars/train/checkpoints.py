"""Checkpoints of a run (model, optimizer state, progress) through
`tf.train.CheckpointManager`, resuming from the latest readable one, and the
run's configuration kept beside them.

A checkpoint only becomes "latest" once its files are written: the manager
updates the `checkpoint` index file atomically after them, so a process
killed mid-save leaves the previous checkpoint as the one restored.
"""

import json
import os
import re
import shutil
import sys
import tempfile

import tensorflow as tf

from keras_lars.train.errors import CheckpointError, UsageError
from keras_lars.train.records import write_json

RUN_CONFIG = "run_config.json"
# Flags that define the model, the optimizer or the layout of their state
# (and of the run's progress in steps and epochs): a restart must keep them.
# Every other flag may change, hyperparameters included (a diverged run is
# resumed with a lower --lars-opt-base-learning-rate).
RUN_FLAGS = ("dataset", "model", "optimizer", "image_size", "zero_init_residual", "global_batch_size",
             "gradient_accumulation_steps", "steps_per_epoch", "dtype", "layer_statistics_every")
# What reading a damaged checkpoint raises: DataLossError (flipped bytes),
# NotFoundError (a missing shard), OpError (a bad index), IndexError (a
# truncated data file).
_DAMAGE = (tf.errors.OpError, IndexError)


def flag(name):
    return "--" + name.replace("_", "-")


def check_restart(output_dir, config):
    """Stops a restart that changes a flag of `RUN_FLAGS`.

    Args:
        output_dir: the run's output directory.
        config: dict of the resolved `TrainConfig` of this start.

    Raises:
        UsageError: a flag of `RUN_FLAGS` differs from its value in
            `<output_dir>/checkpoints/run_config.json` (written by the first
            start); the message names the directory and each flag, old and new.
    """
    saved = _read_run_config(output_dir)
    if saved is None or not tf.train.latest_checkpoint(os.path.join(output_dir, "checkpoints")):
        return
    changed = [f"{flag(k)} {saved.get(k)!r} -> {config.get(k)!r}" for k in RUN_FLAGS if saved.get(k) != config.get(k)]
    if changed:
        raise UsageError(
            f"--output-dir {output_dir} holds checkpoints of a run with other flags: {'; '.join(changed)}. "
            f"Restart with that run's {', '.join(flag(k) for k in RUN_FLAGS)} (they define its model, optimizer "
            "and state) or pass a new --output-dir.")


def write_run_config(output_dir, config):
    """Saves the first start's flags (a dict) as the run's, for
    `check_restart`; later starts leave the file as it is."""
    directory = os.path.join(output_dir, "checkpoints")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, RUN_CONFIG)
    if os.path.exists(path):
        return
    write_json(path, config)


def _read_run_config(output_dir):
    try:
        with open(os.path.join(output_dir, "checkpoints", RUN_CONFIG)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


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
        self._max_to_keep = max_to_keep
        self._checkpoint = tf.train.Checkpoint(**objects)
        self._manager = self._make_manager()
        self._last_step = None

    def _make_manager(self):
        return tf.train.CheckpointManager(self._checkpoint, self.directory, self._max_to_keep) if self._chief else None

    def restore_latest(self):
        """Restores the latest readable checkpoint, if any. Returns its path or None.

        A damaged latest checkpoint (a truncated or missing file, flipped
        bytes) is reported on stderr in one line and the previous kept one
        restored instead; the chief then makes that one the latest, so the
        damaged files are only overwritten by a later save.

        Raises:
            CheckpointError: checkpoints exist and none of them reads.
            UsageError: a checkpoint that reads does not match the model or
                optimizer built for this run (other flags).
        """
        state = tf.train.get_checkpoint_state(self.directory)
        kept = list(state.all_model_checkpoint_paths) if state else []
        if state and state.model_checkpoint_path not in kept:
            kept.append(state.model_checkpoint_path)
        damaged = []
        for path in reversed(kept):
            problem = _unreadable(path)
            if problem:
                damaged.append(f"{path} ({problem})")
                print(f"checkpoint {path} cannot be read ({problem}); trying the previous one", file=sys.stderr)
                continue
            try:
                self._checkpoint.restore(path).assert_existing_objects_matched()
            except (ValueError, AssertionError) as e:
                raise UsageError(
                    f"checkpoint {path} does not match the model and optimizer of these flags "
                    f"({_reason(e)}): restart with the run's flags or pass a new --output-dir.") from None
            if damaged and self._chief:
                tf.compat.v1.train.update_checkpoint_state(self.directory, path,
                                                 all_model_checkpoint_paths=kept[:kept.index(path) + 1])
                self._manager = self._make_manager()
            return path
        if damaged:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be read: {'; '.join(damaged)}. Nothing was overwritten: "
                "restore the files from a copy, or move the directory away to start the run afresh.")
        return None

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


def _unreadable(path):
    """Why checkpoint `path` cannot be read, or None: every tensor is read
    (and its checksum checked) before anything is restored, so a damaged
    checkpoint never half-restores the model."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except _DAMAGE as e:
        return _reason(e)
    return None


def _reason(error):
    """TensorFlow's message, one line, without its op-wrapper noise."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\]$", "", text)[:300]
