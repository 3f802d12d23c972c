"""The evals' record: evals.json, the best top-1 in the checkpointed
progress, and whether the target accuracy is reached."""

from keras_lars.train import records
from keras_lars.train.loop.controller import Action


class EvalRecords(Action):
    """Args:
        output_dir: the run's folder; evals.json is read at construction
            (a resumed run's evals) and rewritten after each eval.
        chief: bool; only the chief prints and writes.
        progress: {"best_top1", ...}: tf.Variables the checkpoints hold.
        target_accuracy: float in (0, 1], or None: no target.
    """

    part = "evals"

    def __init__(self, output_dir, chief, progress, target_accuracy):
        self._output_dir, self._chief, self._progress = output_dir, chief, progress
        self.target_accuracy = target_accuracy
        self.evals = records.read_evals(output_dir)
        self.target_reached = self._reached(float(progress["best_top1"].numpy()))

    def evaluated(self, epoch, record):
        self.evals = {**self.evals, epoch: record}
        if self._chief:
            print(f"eval after epoch {epoch} (step {record['step']}): top-1 {record['top1']:.4f}, "
                  f"loss {record['loss']:.4f}, {record['examples']} examples")
            records.write_evals(self._output_dir, self.evals)
        best = self._progress["best_top1"]
        best.assign(max(float(best.numpy()), record["top1"]))
        self.target_reached = self._reached(record["top1"])

    def _reached(self, top1):
        return self.target_accuracy is not None and top1 >= self.target_accuracy

    def results(self):
        """The evals' side of the run's results."""
        top1 = [self.evals[e]["top1"] for e in sorted(self.evals)]
        return {
            "final_top1": top1[-1] if top1 else None,
            "best_top1": max(top1) if top1 else None,
            "target_accuracy": self.target_accuracy,
            "target_reached": self.target_reached,
        }
