"""The MLPerf log's training markers: blocks (an eval's epochs,
`block_start`/`block_stop`) and evals (`eval_start`, `eval_accuracy`,
`eval_stop`)."""

from mlperf_logging.mllog import constants as mlperf

from keras_lars.train.loop.controller import Action


class MLPerfBlocks(Action):
    """Args:
        log: `mlperf_log.MLPerfLog`.
        eval_due: callable(epoch) -> bool: a block spans the epochs up to
            the next eval.
    """

    def __init__(self, log, eval_due):
        self._log, self._eval_due = log, eval_due
        self._block_first = None

    def epoch_start(self, epoch, loops):
        if self._block_first is None:
            self._block_first = last = epoch
            while not self._eval_due(last):
                last += 1
            self._log.start(mlperf.BLOCK_START, first_epoch_num=epoch, epoch_count=last - epoch + 1)

    def eval_start(self, epoch):
        self._log.start(mlperf.EVAL_START, epoch_num=epoch)

    def evaluated(self, epoch, record):
        self._log.event(mlperf.EVAL_ACCURACY, record["top1"], epoch_num=epoch)
        self._log.end(mlperf.EVAL_STOP, epoch_num=epoch)
        self._log.end(mlperf.BLOCK_STOP, first_epoch_num=self._block_first)
        self._block_first = None
