"""The progress bar: "Epoch i/N", then each loop's mean loss and last LR."""

import os

import keras
import numpy as np

from keras_lars.train.loop.controller import Action


class ProgressBar(Action):
    """Args:
        epochs: int, the run's last epoch.
        steps_per_epoch: int.
        verbose: Keras's `Progbar` verbosity (0: silent, as on workers other
            than the chief; 1: a live bar; 2: one line per update); None: 2
            under CI (environment variable CI set), else 1.
    """

    def __init__(self, epochs, steps_per_epoch, verbose=None):
        self._epochs, self._steps_per_epoch = epochs, steps_per_epoch
        self._verbose = (2 if os.environ.get("CI") else 1) if verbose is None else verbose
        self._bar = None

    def epoch_start(self, epoch, loops):
        self._bar = None
        if loops:
            self._bar = keras.utils.Progbar(self._steps_per_epoch, verbose=self._verbose,
                                            stateful_metrics=["learning_rate"])
            if self._verbose:
                print(f"Epoch {epoch}/{self._epochs}")

    def loop_end(self, output):
        self._bar.update(output.step - (output.epoch - 1) * self._steps_per_epoch,
                         [("loss", float(np.mean(output.losses))),
                          ("learning_rate", float(output.learning_rates[-1]))])
