"""Per-layer statistics (`keras_lars.layer_statistics`: trust ratios, weight
and gradient norms) of the last step at each multiple of
`--layer-statistics-every`, to CSV and TensorBoard."""

import os

from keras_lars import layer_statistics
from keras_lars.train.loop.controller import Action


class LayerStatistics(Action):
    """Args:
        output_dir: the run's folder (layer_statistics.csv, and
            tensorboard/layer_statistics/).
        optimizer: the model's optimizer, built with `layer_statistics=True`.
        every: int >= 1, optimizer steps; loops end at its multiples.
    """

    def __init__(self, output_dir, optimizer, every):
        self._output_dir, self._optimizer, self._every = output_dir, optimizer, every
        self._writer = None

    def start(self):
        self._writer = layer_statistics.LayerStatisticsWriter(
            self._output_dir, tensorboard_dir=os.path.join(self._output_dir, "tensorboard", "layer_statistics"))

    def loop_end(self, output):
        if output.step % self._every == 0:
            self._writer.write(self._optimizer, output.step)

    def close(self):
        if self._writer is not None:
            self._writer.close()
