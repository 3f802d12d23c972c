"""Errors the trainer reports to its user as one line, with an exit status.

Each says what was wrong, with the value, and what to do; the command-line
entry point prints it without a traceback (`keras_lars.train.cli`).
"""


class TrainerError(Exception):
    """A run that cannot go on; `str(error)` is one line for the user."""

    exit_status = 1


class UsageError(TrainerError, ValueError):
    """A flag value that cannot work with this dataset, model or machine
    (found after parsing: an unknown dataset, a batch larger than the split,
    an unwritable output directory)."""

    exit_status = 2


class DataError(TrainerError):
    """A prepared dataset that cannot be read (e.g. a corrupted TFRecord file)."""


class DivergenceError(TrainerError):
    """A non-finite loss or non-finite weights: the run stopped, and the latest
    checkpoint holds the last finite state."""

    exit_status = 3


class CheckpointError(TrainerError):
    """No checkpoint in the output directory can be read (each one damaged:
    a truncated or missing file, flipped bytes); nothing was overwritten."""
