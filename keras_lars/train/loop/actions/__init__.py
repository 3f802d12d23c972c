"""What runs between device loops: one small `controller.Action` per file,
as Orbit's `orbit/actions/`. `runner.py` chooses them and their order."""

from keras_lars.train.loop.actions.checkpoint import SaveCheckpoint
from keras_lars.train.loop.actions.eval_records import EvalRecords
from keras_lars.train.loop.actions.layer_statistics import LayerStatistics
from keras_lars.train.loop.actions.mlperf import MLPerfBlocks
from keras_lars.train.loop.actions.preemption import PreemptionSave
from keras_lars.train.loop.actions.progress import ProgressBar
from keras_lars.train.loop.actions.tensorboard import TensorBoardScalars

__all__ = ["EvalRecords", "LayerStatistics", "MLPerfBlocks", "PreemptionSave", "ProgressBar", "SaveCheckpoint",
           "TensorBoardScalars"]
