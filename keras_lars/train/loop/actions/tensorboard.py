"""TensorBoard scalars: every step's loss and learning rate
(train/loss, train/learning_rate) and each eval's (eval/top1, eval/loss)."""

import tensorflow as tf

from keras_lars.train.loop.controller import Action


class TensorBoardScalars(Action):
    """Writes to the event files in `directory` (created at `start`)."""

    def __init__(self, directory):
        self._directory = directory
        self._writer = None

    def start(self):
        self._writer = tf.summary.create_file_writer(self._directory)

    def loop_end(self, output):
        with self._writer.as_default():
            for step, loss, lr in zip(range(output.first_step + 1, output.step + 1), output.losses,
                                      output.learning_rates):
                tf.summary.scalar("train/loss", loss, step=step)
                tf.summary.scalar("train/learning_rate", lr, step=step)

    def evaluated(self, epoch, record):
        with self._writer.as_default(step=record["step"]):
            tf.summary.scalar("eval/top1", record["top1"])
            tf.summary.scalar("eval/loss", record["loss"])

    def close(self):
        if self._writer is not None:
            self._writer.close()
